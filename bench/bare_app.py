"""A bare Flask app: the baseline the identify benchmark compares against.

It takes the same requests as POST /identify (parse the JSON body, answer a
JSON object of the same shape) and touches no database, so the gap between
the two runs is what identify itself costs.
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/identify")
def identify():
    """Echo the request's values in identify's answer shape."""
    body = request.get_json()
    email = body.get("email")
    phone = body.get("phoneNumber")
    return jsonify(
        contact={
            "primaryContactId": 1,
            "primaryContatctId": 1,
            "emails": [email] if email else [],
            "phoneNumbers": [phone] if phone else [],
            "secondaryContactIds": [],
        }
    )


@app.get("/healthz")
def healthz():
    """Readiness probe for the benchmark runner."""
    return jsonify(status="ok")
