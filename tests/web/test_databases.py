"""The web app's queries on both databases (SQLite and PostgreSQL): login, study view, images, audit review."""

import datetime as dt


def test_web_flow_on_each_database(instance, study_adder, csrf):
    from medsearch import accounts
    from medsearch.web import create_app

    study_adder(instance, "paDB0000000000", "stDB0000000000", "seDB0000000000")
    accounts.add_user(instance, "rad", "correct-horse-battery", "radiologist")
    accounts.add_user(instance, "comp", "correct-horse-battery", "compliance")
    client = create_app({"MEDSEARCH_INSTANCE": instance, "TESTING": True}).test_client()

    def login(name):
        token = csrf(client.get("/login").get_data(as_text=True))
        resp = client.post("/login", data={"username": name, "password": "correct-horse-battery",
                                           "csrf_token": token})
        assert resp.status_code == 302

    login("rad")
    assert client.get("/studies/stDB0000000000").status_code == 200
    assert client.get("/api/v1/series/seDB0000000000/slices/3.png").mimetype == "image/png"
    with client.session_transaction() as sess:
        token = sess["csrf"]
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    login("comp")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    html = client.get(f"/audit?user=rad&since={today}&until={today}&patient=paDB0000000000").get_data(as_text=True)
    assert "study_view" in html and "stDB0000000000" in html
    body = client.get("/api/v1/audit/events?type=login").get_json()
    assert [(e["actor"], e["payload"]["method"]) for e in body["items"]] == [
        ("comp", "password"), ("rad", "logout"), ("rad", "password")]
    assert client.get("/api/v1/audit/verify").get_json()["ok"] is True
