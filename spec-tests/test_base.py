"""API version check / Determining Support (end-1)."""


def test_end1_get_v2_returns_200(reg):
    """end-1 GET /v2/: "If the response is `200 OK`, then the registry implements this
    specification." """
    r = reg.get("/v2/")
    assert r.status_code == 200, r.text


def test_end1_docker_distribution_api_version_header(reg):
    """Legacy Docker support HTTP headers: `Docker-Distribution-API-Version: registry/2.0` on
    the /v2/ answer (a client MAY require it; the server contract sends it)."""
    r = reg.get("/v2/")
    assert r.headers.get("Docker-Distribution-API-Version") == "registry/2.0", dict(r.headers)


def test_end1_head_v2_returns_200_without_body(reg):
    """end-1 via HEAD: same status as GET, and a HEAD answer carries no body."""
    r = reg.head("/v2/")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers.get("Docker-Distribution-API-Version") == "registry/2.0"

