"""Distribution to a real Glance behind a real Keystone 30: the Glance endpoint comes from the
Keystone catalog, with a password and with an application credential."""

from __future__ import annotations

import hashlib

import pytest
import requests

import imserver
from distkit import api, distribute, register, target, uid, vm_image, wait_job
from glance import Glance


@pytest.fixture(scope="module")
def glance():
    with Glance(mode="keystone") as g:
        yield g


def test_push_through_keystone_with_password_and_application_credential(glance, tmp_path):
    with imserver.Server(env={"IMAGE_MANAGER_DISTRIBUTION__POLL_INTERVAL_MS": "200"}) as srv:
        e, blob = vm_image(srv, tmp_path, uid("ks-"))
        pw = register(srv, {"name": uid("ks-pw-"), "type": "openstack", "auth_url": glance.auth_url,
                            "region": glance.region, "project": glance.demo_project,
                            "username": glance.demo_user, "password": glance.demo_password})
        h = api(srv, "POST", f"/api/v1/vims/{pw['id']}/test").json()["health"]
        assert h["state"] == "ok" and h["endpoint"].startswith(glance.endpoint), h
        t = target(wait_job(srv, distribute(srv, [e["id"]], [pw["id"]], "push")["id"]))
        assert t["state"] == "active", t
        token = glance.token(glance.demo_user, glance.demo_password, glance.demo_project)
        img = requests.get(f"{glance.endpoint}/v2/images/{t['remote_id']}", headers={"X-Auth-Token": token},
                           timeout=30).json()
        assert img["os_hash_value"] == hashlib.sha512(blob).hexdigest() and img["name"] == e["name"], img
        # An application credential of the same user sees the same image: present, nothing sent.
        app_id, app_secret = glance.demo_app_credential(uid("im-"))
        ac = register(srv, {"name": uid("ks-ac-"), "type": "openstack", "auth_url": glance.auth_url,
                            "region": glance.region, "application_credential_id": app_id,
                            "application_credential_secret": app_secret})
        again = target(wait_job(srv, distribute(srv, [e["id"]], [ac["id"]], "push")["id"]))
        assert (again["state"], again["skipped"], again["remote_id"]) == ("active", True, t["remote_id"]), again
        # A wrong password: unauthenticated, and the target fails without retrying forever.
        bad = register(srv, {"name": uid("ks-bad-"), "type": "openstack", "auth_url": glance.auth_url,
                             "region": glance.region, "project": glance.demo_project,
                             "username": glance.demo_user, "password": "wrong"})
        assert api(srv, "POST", f"/api/v1/vims/{bad['id']}/test").json()["health"]["state"] == "unauthenticated"
        f = target(wait_job(srv, distribute(srv, [e["id"]], [bad["id"]], "push")["id"]))
        assert f["state"] == "failed" and f["attempts"] == 1, f
        assert "wrong" not in srv.log()
