"""Workflow category Content Discovery: tags list (end-8a, end-8b) and the catalog."""

import uuid

import pytest

from ocispec import OCI_MANIFEST, assert_error, link_next, unique_repo, with_query

TAGS = ["alpha", "beta", "delta", "epsilon", "gamma"]  # sorts the same in every lexical order


def lexically_sorted(tags):
    """Tags "MUST be in lexical order (i.e. case-insensitive alphanumeric order)" in v1.1.0 and
    "lexical or 'ASCIIbetical'" in later text: accept either ordering."""
    return tags == sorted(tags) or tags == sorted(tags, key=lambda t: (t.lower(), t))


@pytest.fixture
def tagged(reg, repo):
    img = reg.push_image(repo, TAGS[0])
    for t in TAGS[1:]:
        reg.push_manifest(repo, t, img.manifest, OCI_MANIFEST)
    return repo


def tags_of(r):
    assert r.status_code == 200, (r.status_code, r.text[:300])
    body = r.json()
    return body.get("tags") or []


# ---- end-8a --------------------------------------------------------------------------------

def test_tags_list_returns_200_with_name_and_tags(reg, tagged):
    """Listing Tags (end-8a): "Assuming a repository is found, this request MUST return a
    `200 OK` response code" with body {"name": "<name>", "tags": [...]}."""
    r = reg.get(f"/v2/{tagged}/tags/list")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == tagged
    assert sorted(body["tags"]) == sorted(TAGS)


def test_tags_list_is_in_lexical_order(reg, repo):
    """Listing Tags: "If the list is not empty, the tags MUST be in lexical order" - pushed in a
    scrambled order, listed sorted."""
    tags = ["v10", "v2", "latest", "1.0", "Zeta", "abc", "_under", "v1.9", "ABD"]
    img = reg.push_image(repo, tags[0])
    for t in tags[1:]:
        reg.push_manifest(repo, t, img.manifest, OCI_MANIFEST)
    got = tags_of(reg.get(f"/v2/{repo}/tags/list"))
    assert sorted(got) == sorted(tags)
    assert lexically_sorted(got), got


def test_tags_list_of_repository_without_tags_is_empty(reg, repo):
    """Listing Tags: "The list of tags MAY be empty if there are no tags on the repository" -
    a repository holding only an untagged manifest answers 200 with no tags."""
    reg.push_image(repo)  # pushed by digest only
    r = reg.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert r.json().get("name") == repo
    assert tags_of(r) == []


def test_tags_list_unknown_repository_returns_404_name_unknown(reg):
    """Listing Tags (end-8a failure 404): an unknown repository -> 404 NAME_UNKNOWN."""
    r = reg.get(f"/v2/{unique_repo('nosuch')}/tags/list")
    assert_error(r, 404, "NAME_UNKNOWN")


def test_tags_list_only_lists_own_repository(reg, tagged):
    """Listing Tags: each `<tagX>` "is a tag present in the repository" - tags of another
    repository never leak in."""
    other = unique_repo()
    reg.push_image(other, "only-in-other")
    assert "only-in-other" not in tags_of(reg.get(f"/v2/{tagged}/tags/list"))
    assert tags_of(reg.get(f"/v2/{other}/tags/list")) == ["only-in-other"]


# ---- end-8b --------------------------------------------------------------------------------

def test_tags_list_n_limits_results(reg, tagged):
    """Listing Tags (end-8b): with `n`, "the response MUST include `<int>` results" unless fewer
    tags exist or a Link header is provided; the first n in lexical order."""
    r = reg.get(f"/v2/{tagged}/tags/list?n=2")
    got = tags_of(r)
    if r.headers.get("Link") is None or len(got) == 2:
        assert got == TAGS[:2]
    else:
        assert 0 < len(got) < 2 and got == TAGS[:len(got)]


def test_tags_list_n_and_last(reg, tagged):
    """Listing Tags (end-8b): "A request of this sort will return up to `<int>` tags, beginning
    non-inclusively with `<tagname>`"."""
    got = tags_of(reg.get(f"/v2/{tagged}/tags/list?n=2&last=beta"))
    assert got == ["delta", "epsilon"]


def test_tags_list_last_without_n(reg, tagged):
    """Listing Tags: "When using the `last` query parameter, the `n` parameter is OPTIONAL" -
    tags after `last`, exclusive."""
    got = tags_of(reg.get(f"/v2/{tagged}/tags/list?last=delta"))
    assert got == ["epsilon", "gamma"]


def test_tags_list_last_not_an_existing_tag(reg, tagged):
    """Listing Tags: `last` is a tag value; results are those lexically after it even when it is
    not itself a tag."""
    got = tags_of(reg.get(f"/v2/{tagged}/tags/list?last=c"))
    assert got == ["delta", "epsilon", "gamma"]


def test_tags_list_last_after_everything_is_empty(reg, tagged):
    """Listing Tags: nothing sorts after the last tag -> 200 with an empty list."""
    r = reg.get(f"/v2/{tagged}/tags/list?n=5&last=gamma")
    assert tags_of(r) == []
    assert r.headers.get("Link") is None


def test_tags_list_n_zero_is_empty_without_link(reg, tagged):
    """Listing Tags: "When `n` is zero, this endpoint MUST return an empty list, and MUST NOT
    include a `Link` header"."""
    r = reg.get(f"/v2/{tagged}/tags/list?n=0")
    assert tags_of(r) == []
    assert r.headers.get("Link") is None


def test_tags_list_n_larger_than_count_returns_all_without_link(reg, tagged):
    """Listing Tags: fewer than n results only when fewer tags exist; then there is no next
    page to link to."""
    r = reg.get(f"/v2/{tagged}/tags/list?n=100")
    assert tags_of(r) == TAGS
    assert r.headers.get("Link") is None


def test_tags_list_link_header_pagination(reg, tagged):
    """Listing Tags: a registry may give `Link: <url>; rel="next"` (RFC 5988); following it, page
    by page, yields every tag exactly once, in order."""
    url, seen, pages = f"/v2/{tagged}/tags/list?n=2", [], 0
    while url:
        r = reg.get(url)
        page = tags_of(r)
        assert len(page) <= 2
        seen.extend(page)
        url = link_next(r)
        pages += 1
        assert pages <= 10, "pagination does not terminate"
        if url is None and len(seen) < len(TAGS):
            # no Link: continue with `last` like an older client
            url = f"/v2/{tagged}/tags/list?n=2&last={seen[-1]}" if page else None
    assert seen == TAGS


def test_tags_list_link_header_present_when_truncated(reg, tagged):
    """Listing Tags (server contract): when a page is cut short by `n` and more tags exist, a
    `Link: <...>; rel="next"` header points at the next page."""
    r = reg.get(f"/v2/{tagged}/tags/list?n=2")
    nxt = link_next(r)
    assert nxt, f"no Link header: {dict(r.headers)}"
    assert tags_of(reg.get(nxt)) == ["delta", "epsilon"]


def test_tags_list_reflects_new_tags(reg, tagged):
    """Listing Tags: a newly pushed tag appears in the list at its lexical position."""
    img = reg.get(f"/v2/{tagged}/manifests/alpha").content
    reg.push_manifest(tagged, "charlie", img, OCI_MANIFEST)
    assert tags_of(reg.get(f"/v2/{tagged}/tags/list")) == [
        "alpha", "beta", "charlie", "delta", "epsilon", "gamma"]


# ---- catalog -------------------------------------------------------------------------------

@pytest.fixture
def catalog_repos(reg):
    """Three repositories under a unique prefix; `last=<prefix>` starts the catalog right
    before them (the prefix sorts before prefix/...)."""
    prefix = f"cat{uuid.uuid4().hex[:12]}"
    names = [f"{prefix}/a", f"{prefix}/b", f"{prefix}/c"]
    for n in names:
        reg.push_image(n, "t")
    return prefix, names


def catalog_page(reg, **params):
    r = reg.get(with_query("/v2/_catalog", **params))
    assert r.status_code == 200, (r.status_code, r.text[:300])
    repos = r.json().get("repositories")
    assert isinstance(repos, list)
    return r, repos


def test_catalog_lists_repositories_in_lexical_order(reg, catalog_repos):
    """Catalog (`/v2/_catalog`): {"repositories": [...]} containing every repository, sorted."""
    _, names = catalog_repos
    r, repos = catalog_page(reg)
    assert set(names) <= set(repos)
    assert repos == sorted(repos)


def test_catalog_n_and_last_pagination(reg, catalog_repos):
    """Catalog: `n` limits, `last` continues non-inclusively, as for tags."""
    prefix, names = catalog_repos
    _, page = catalog_page(reg, n=2, last=prefix)
    assert page == names[:2]
    _, page = catalog_page(reg, n=2, last=names[1])
    assert page[:1] == names[2:]


def test_catalog_link_header(reg, catalog_repos):
    """Catalog: a page cut short by `n` carries `Link: <...>; rel="next"` leading on."""
    prefix, names = catalog_repos
    r, page = catalog_page(reg, n=1, last=prefix)
    assert page == names[:1]
    nxt = link_next(r)
    assert nxt, dict(r.headers)
    r2 = reg.get(nxt)
    assert r2.status_code == 200
    assert r2.json()["repositories"] == names[1:2]


def test_catalog_n_zero_is_empty(reg, catalog_repos):
    """Catalog: n=0 -> empty list, no Link (as for tags)."""
    r, page = catalog_page(reg, n=0)
    assert page == []
    assert r.headers.get("Link") is None


def test_catalog_does_not_list_unknown_repositories(reg, catalog_repos):
    """Catalog: only existing repositories are listed - a name never pushed to is absent."""
    prefix, names = catalog_repos
    _, page = catalog_page(reg, n=10, last=prefix)
    assert page[:3] == names
    assert f"{prefix}/ghost" not in page
