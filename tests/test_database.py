"""Per-dialect engine settings the concurrency design depends on."""

from webapp.extensions import db


def test_engine_settings_per_dialect(app, dialect):
    with db.engine.connect() as conn:
        if dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            assert busy == app.config["SQLITE_BUSY_TIMEOUT_MS"]
        else:
            level = conn.exec_driver_sql("SELECT @@session.tx_isolation").scalar()
            assert level == "READ-COMMITTED"
            charset = conn.exec_driver_sql("SELECT @@character_set_client").scalar()
            assert charset == "utf8mb4"


def test_unicode_email_round_trips(client, app):
    response = client.post("/identify", json={"email": "zoë.ünïcødé@exämple.de"})
    assert response.status_code == 200
    assert response.get_json()["contact"]["emails"] == ["zoë.ünïcødé@exämple.de"]
    again = client.post("/identify", json={"email": "ZOË.ÜNÏCØDÉ@EXÄMPLE.DE"})
    assert again.get_json()["contact"]["primaryContactId"] == 1
