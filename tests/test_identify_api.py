"""POST /identify over the real app, on SQLite and MariaDB: answers and database state."""

import pytest

from tests.builders import assert_invariants, contacts, identify

LORRAINE = "lorraine@hillvalley.edu"
MCFLY = "mcfly@hillvalley.edu"


def test_task_example_lorraine_and_mcfly(client):
    status, first = identify(client, LORRAINE, "123456")
    assert status == 200
    assert first["contact"] == {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": [LORRAINE],
        "phoneNumbers": ["123456"],
        "secondaryContactIds": [],
    }
    status, body = identify(client, MCFLY, "123456")
    assert status == 200
    expected = {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": [LORRAINE, MCFLY],
        "phoneNumbers": ["123456"],
        "secondaryContactIds": [2],
    }
    assert body["contact"] == expected
    for email, phone in [(None, "123456"), (LORRAINE, None), (MCFLY, None), (MCFLY, "123456")]:
        status, again = identify(client, email, phone)
        assert (status, again["contact"]) == (200, expected)
    status, again = identify(client, phone=123456)
    assert (status, again["contact"]) == (200, expected)
    assert [(c.id, c.linkPrecedence, c.linkedId) for c in contacts()] == [
        (1, "primary", None),
        (2, "secondary", 1),
    ]
    assert_invariants()


@pytest.mark.parametrize("missing", [{}, {"email": None}, {"email": "", "phoneNumber": "  "}])
def test_nothing_to_identify_is_400(client, missing):
    response = client.post("/identify", json=missing)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "missing_identifier"
    assert contacts() == []
