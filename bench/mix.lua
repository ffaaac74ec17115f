-- wrk script: replays pre-generated POST /identify bodies and counts what came back.
--
-- Arguments (after wrk's "--"): the bodies file (one "kind<TAB>json" line per
-- request) and the number of wrk threads. Thread t sends lines t+1, t+1+n, ...
-- so that no two threads send the same new customer. The summary is written as
-- JSON to the file named by BENCH_WRK_OUT.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local headers = { ["Content-Type"] = "application/json" }
local kinds, bodies = {}, {}
local position, stride = 1, 1
sent, statuses, wrapped = {}, {}, 0

function init(args)
  for line in io.lines(args[1]) do
    local kind, body = line:match("^(%S+)\t(.*)$")
    kinds[#kinds + 1] = kind
    bodies[#bodies + 1] = body
  end
  stride = tonumber(args[2])
  position = tid + 1
end

function request()
  local i = position
  position = position + stride
  if position > #bodies then
    -- Out of fresh bodies: start over (new customers become returning ones);
    -- the summary reports it so a run that wraps is not mistaken for the mix.
    position = tid + 1
    wrapped = wrapped + 1
  end
  sent[kinds[i]] = (sent[kinds[i]] or 0) + 1
  return wrk.format("POST", "/identify", headers, bodies[i])
end

function response(status, _headers, _body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function json_counts(counts)
  local parts = {}
  for key, value in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', tostring(key), value)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function add_into(total, counts)
  for key, value in pairs(counts) do
    total[key] = (total[key] or 0) + value
  end
end

function done(summary, latency, _requests)
  local all_sent, all_statuses, all_wrapped = {}, {}, 0
  for _, thread in ipairs(threads) do
    add_into(all_sent, thread:get("sent"))
    add_into(all_statuses, thread:get("statuses"))
    all_wrapped = all_wrapped + thread:get("wrapped")
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("BENCH_WRK_OUT"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}, ' ..
    '"statuses": %s, "sent": %s, "wrapped": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, json_counts(all_statuses), json_counts(all_sent), all_wrapped))
  out:close()
end
