"""Listing Referrers (end-12a, end-12b)."""

import pytest

from ocispec import (
    OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, assert_error, descriptor, digest, dumps, link_next,
    subject_of, unique_bytes, unique_repo, with_query,
)

SBOM = "application/vnd.example.sbom.v1"
SIG = "application/vnd.example.signature.v1"


def referrers(reg, repo, subject_digest, artifact_type=None):
    """GET the referrers list, following `Link: <...>; rel="next"` pages.

    Returns (first response, all descriptors). Every page is checked to be an image index
    served as application/vnd.oci.image.index.v1+json."""
    url = f"/v2/{repo}/referrers/{subject_digest}"
    if artifact_type is not None:
        url = with_query(url, artifactType=artifact_type)
    first, out, seen = None, [], set()
    while url:
        r = reg.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        assert r.headers.get("Content-Type", "").split(";")[0].strip() == OCI_INDEX
        body = r.json()
        assert body.get("schemaVersion") == 2
        assert body.get("mediaType") == OCI_INDEX
        assert isinstance(body.get("manifests"), list)
        out.extend(body["manifests"])
        first = first or r
        url = link_next(r)
        assert url not in seen, "Link pagination loops"
        seen.add(url)
    return first, out


@pytest.fixture
def subject(reg, repo):
    return reg.push_image(repo, "subject")


def by_digest(descs):
    return {d["digest"]: d for d in descs}


def test_referrers_unknown_digest_returns_empty_index(reg, subject):
    """Listing Referrers: "Assuming a repository is found, this request MUST return a `200 OK`
    response code" and, with no referrers, "the registry MUST return an image index with an
    empty `manifests` list" (Content-Type application/vnd.oci.image.index.v1+json)."""
    _, descs = referrers(reg, subject.repo, digest(unique_bytes()))
    assert descs == []


def test_referrers_existing_manifest_without_referrers_is_empty(reg, subject):
    """Listing Referrers: a manifest nobody refers to has an empty referrers list (200)."""
    _, descs = referrers(reg, subject.repo, subject.digest)
    assert descs == []


def test_referrers_must_not_return_404_for_existing_repository(reg, subject):
    """Listing Referrers: "the registry MUST NOT return a `404 Not Found` to a referrers API
    requests" (for a repository that exists)."""
    r = reg.get(f"/v2/{subject.repo}/referrers/{digest(b'nothing refers to this')}")
    assert r.status_code == 200, r.status_code


def test_referrers_unknown_repository(reg):
    """Listing Referrers: the 200 is required "assuming a repository is found"; for an unknown
    repository an empty index (200) or 404 NAME_UNKNOWN are acceptable."""
    r = reg.get(f"/v2/{unique_repo('nosuch')}/referrers/{digest(b'x')}")
    assert r.status_code in (200, 404), r.status_code
    if r.status_code == 200:
        assert r.json().get("manifests") == []
    else:
        assert_error(r, 404, "NAME_UNKNOWN")


def test_referrers_invalid_digest_returns_400(reg, subject):
    """Listing Referrers: "If the request is invalid, such as a `<digest>` with an invalid
    syntax, a `400 Bad Request` MUST be returned"."""
    for bad in ("sha256:xyz", "notadigest", "sha256:" + "a" * 10):
        r = reg.get(f"/v2/{subject.repo}/referrers/{bad}")
        assert r.status_code == 400, (bad, r.status_code)


def test_referrers_lists_manifests_with_matching_subject(reg, subject):
    """Listing Referrers: the `manifests` list holds descriptors "for all manifests or indexes in
    `<name>` whose `subject` equals `<digest>`" - with their mediaType, size and digest."""
    sbom = reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject))
    sig = reg.push_artifact(subject.repo, SIG, subject=subject_of(subject))
    unrelated = reg.push_artifact(subject.repo, SIG)  # no subject
    _, descs = referrers(reg, subject.repo, subject.digest)
    got = by_digest(descs)
    assert set(got) == {sbom.digest, sig.digest}
    assert unrelated.digest not in got
    for art in (sbom, sig):
        d = got[art.digest]
        assert d["mediaType"] == OCI_MANIFEST
        assert d["size"] == len(art.manifest)


def test_referrers_descriptor_artifact_type_from_manifest(reg, subject):
    """Listing Referrers: the descriptor "MUST include `artifactType` if the referenced manifest
    or index defines one"."""
    art = reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject))
    _, descs = referrers(reg, subject.repo, subject.digest)
    assert by_digest(descs)[art.digest].get("artifactType") == SBOM


def test_referrers_descriptor_artifact_type_falls_back_to_config_media_type(reg, subject):
    """Listing Referrers: "If the referenced manifest has no `artifactType`, the descriptor's
    `artifactType` MUST be set to the config descriptor's `mediaType`"."""
    img = reg.push_image(subject.repo, subject=subject_of(subject),
                         config_media_type="application/vnd.example.config.v1+json")
    _, descs = referrers(reg, subject.repo, subject.digest)
    assert by_digest(descs)[img.digest].get("artifactType") == "application/vnd.example.config.v1+json"


def test_referrers_descriptor_carries_manifest_annotations(reg, subject):
    """Listing Referrers: the descriptor "MUST include all annotations from the referenced
    manifest or index"."""
    ann = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "org.example.k": "v"}
    art = reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject), annotations=ann)
    _, descs = referrers(reg, subject.repo, subject.digest)
    assert by_digest(descs)[art.digest].get("annotations") == ann


def test_referrers_include_index_with_subject(reg, subject):
    """Listing Referrers: indexes with a subject are listed; an index's `artifactType` is
    copied, and an index without one has the descriptor's `artifactType` omitted."""
    child = reg.push_image(subject.repo)
    with_type = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": SBOM,
                       "manifests": [descriptor(OCI_MANIFEST, child.manifest)],
                       "subject": subject_of(subject), "annotations": {"k": "1"}})
    without_type = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                          "manifests": [descriptor(OCI_MANIFEST, child.manifest)],
                          "subject": subject_of(subject)})
    for body in (with_type, without_type):
        reg.push_manifest(subject.repo, digest(body), body, OCI_INDEX)
    _, descs = referrers(reg, subject.repo, subject.digest)
    got = by_digest(descs)
    a, b = got[digest(with_type)], got[digest(without_type)]
    assert a["mediaType"] == OCI_INDEX and a["size"] == len(with_type)
    assert a.get("artifactType") == SBOM and a.get("annotations") == {"k": "1"}
    assert b["mediaType"] == OCI_INDEX
    assert "artifactType" not in b or b["artifactType"] in (None, "")


def test_referrers_filter_by_artifact_type(reg, subject):
    """Listing Referrers (end-12b): filtering on `artifactType`; "If filtering is requested and
    applied, the response MUST include a header `OCI-Filters-Applied: artifactType`"."""
    sbom = reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject))
    reg.push_artifact(subject.repo, SIG, subject=subject_of(subject))
    first, descs = referrers(reg, subject.repo, subject.digest, artifact_type=SBOM)
    assert first.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in descs] == [sbom.digest]


def test_referrers_filter_matching_nothing_is_empty(reg, subject):
    """Listing Referrers (end-12b): a filter that matches no referrer yields an empty list with
    OCI-Filters-Applied: artifactType."""
    reg.push_artifact(subject.repo, SIG, subject=subject_of(subject))
    first, descs = referrers(reg, subject.repo, subject.digest,
                             artifact_type="application/vnd.example.none+json")
    assert first.headers.get("OCI-Filters-Applied") == "artifactType"
    assert descs == []


def test_referrers_filter_with_plus_in_media_type(reg, subject):
    """Listing Referrers (end-12b): an `artifactType` containing `+` (percent-encoded in the
    query) filters exactly."""
    typ = "application/vnd.example.report.v1+json"
    art = reg.push_artifact(subject.repo, typ, subject=subject_of(subject))
    reg.push_artifact(subject.repo, SIG, subject=subject_of(subject))
    first, descs = referrers(reg, subject.repo, subject.digest, artifact_type=typ)
    assert first.headers.get("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in descs] == [art.digest]


def test_referrers_subject_pushed_after_referrer(reg, repo):
    """Push: clients may "push a manifest and referrers to that manifest in either order" - a
    referrer pushed before its subject is listed once the subject exists (and before)."""
    config = dumps({"os": "linux", "n": unique_bytes(8).hex()})
    reg.push_blob(repo, config)
    subject_body = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": descriptor(OCI_CONFIG, config), "layers": []})
    subject_desc = descriptor(OCI_MANIFEST, subject_body)
    art = reg.push_artifact(repo, SBOM, subject=subject_desc)
    _, before = referrers(reg, repo, subject_desc["digest"])
    assert [d["digest"] for d in before] == [art.digest]
    reg.push_manifest(repo, "late", subject_body, OCI_MANIFEST)
    _, after = referrers(reg, repo, subject_desc["digest"])
    assert [d["digest"] for d in after] == [art.digest]


def test_referrers_are_scoped_to_the_repository(reg, subject):
    """Listing Referrers: descriptors are for manifests "in `<name>`": a referrer pushed to
    another repository with the same subject digest is not listed here."""
    other = unique_repo()
    reg.push_artifact(other, SBOM, subject=subject_of(subject))
    _, descs = referrers(reg, subject.repo, subject.digest)
    assert descs == []
    _, other_descs = referrers(reg, other, subject.digest)
    assert len(other_descs) == 1


def test_referrers_deleted_referrer_is_no_longer_listed(reg, subject):
    """Deleting Manifests + Listing Referrers: once a referrer is deleted it is no longer a
    manifest in the repository, so it drops out of the list."""
    keep = reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject))
    gone = reg.push_artifact(subject.repo, SIG, subject=subject_of(subject))
    r = reg.delete(f"/v2/{subject.repo}/manifests/{gone.digest}")
    assert r.status_code == 202, r.status_code
    _, descs = referrers(reg, subject.repo, subject.digest)
    assert [d["digest"] for d in descs] == [keep.digest]


def test_referrers_many_are_all_returned_across_pages(reg, subject):
    """Listing Referrers: "If the registry cannot return all descriptors in a single response,
    it MUST include a `Link` header pointing to the next page" - following Link yields every
    referrer exactly once."""
    pushed = {reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject),
                                annotations={"i": str(i)}).digest for i in range(12)}
    _, descs = referrers(reg, subject.repo, subject.digest)
    got = [d["digest"] for d in descs]
    assert len(got) == len(set(got)), "a referrer appears twice"
    assert set(got) == pushed


def test_referrers_of_a_referrer(reg, subject):
    """Listing Referrers: chains work - a signature on an SBOM is a referrer of the SBOM, not of
    the image."""
    sbom = reg.push_artifact(subject.repo, SBOM, subject=subject_of(subject))
    sig = reg.push_artifact(subject.repo, SIG, subject=subject_of(sbom))
    _, of_image = referrers(reg, subject.repo, subject.digest)
    _, of_sbom = referrers(reg, subject.repo, sbom.digest)
    assert [d["digest"] for d in of_image] == [sbom.digest]
    assert [d["digest"] for d in of_sbom] == [sig.digest]
