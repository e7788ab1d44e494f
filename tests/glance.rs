//! The Glance adapter (src/adapters/glance.rs, keystone.rs) against a real Glance 33, with no
//! auth (a direct endpoint) and behind a real Keystone 30 (password and application
//! credential), each started by the test (tests/support/glance.rs). The two modes run as
//! separate tests, in parallel, on their own ports and data dirs.

#[path = "support/glance.rs"]
mod glance;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use image_manager::adapters::glance::{
    GlanceClient, GlanceConfig, GlanceEndpoint, GlanceImage, NewGlanceImage, PatchOp,
};
use image_manager::adapters::keystone::{KeystoneAuth, KeystoneCredential};
use image_manager::adapters::AdapterErrorKind;
use md5::Md5;
use serde_json::json;
use sha2::{Digest, Sha512};

use glance::{Glance, Mode};

/// How long an upload or import may take to reach a final state.
const SETTLE: Duration = Duration::from_secs(60);

fn config(endpoint: GlanceEndpoint) -> GlanceConfig {
    GlanceConfig {
        endpoint,
        call_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        ca_pem: None,
    }
}

fn direct(url: &str) -> GlanceClient {
    GlanceClient::new(config(GlanceEndpoint::Direct { url: url.into() })).expect("client")
}

fn keystone_password(g: &Glance, password: &str) -> GlanceClient {
    let mut auth = KeystoneAuth::new(
        g.auth_url.clone().expect("auth url"),
        KeystoneCredential::Password {
            username: g.demo_user.clone(),
            password: password.into(),
            user_domain: "Default".into(),
        },
    );
    auth.project = Some(g.demo_project.clone());
    auth.region = Some(g.region.clone());
    GlanceClient::new(config(GlanceEndpoint::Keystone(auth))).expect("client")
}

/// A real qcow2 of virtual size `mib` MiB, made by qemu-img.
fn qcow2(dir: &Path, name: &str, mib: u32) -> Vec<u8> {
    let path = dir.join(name);
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg(format!("{mib}M"))
        .output()
        .expect("qemu-img (scripts/install-test-deps.sh installs qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&path).expect("the qcow2")
}

/// Poll the image until `done` holds for it (or the deadline passes, failing the test).
async fn wait_for(c: &GlanceClient, id: &str, what: &str, done: impl Fn(&GlanceImage) -> bool) -> GlanceImage {
    let deadline = Instant::now() + SETTLE;
    loop {
        let img = c.get_image(id).await.expect("get_image").expect("the image exists");
        if done(&img) {
            return img;
        }
        assert!(
            Instant::now() < deadline,
            "image {id} not {what} within {SETTLE:?}: {img:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // polling interval
    }
}

/// Glance names the stores an import failed to in `os_glance_failed_import` (empty while none).
fn failed_import(i: &GlanceImage) -> bool {
    i.properties
        .get("os_glance_failed_import")
        .is_some_and(|v| !v.is_empty())
}

fn new_image(name: &str, props: &[(&str, &str)]) -> NewGlanceImage {
    NewGlanceImage {
        name: name.into(),
        disk_format: "qcow2".into(),
        container_format: "bare".into(),
        visibility: "private".into(),
        min_disk: 1,
        min_ram: 64,
        tags: vec!["im-test".into()],
        properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// A tiny HTTP server on 127.0.0.1 serving `body` at `/disk.qcow2` (404 elsewhere); its base URL.
async fn serve(body: Vec<u8>) -> String {
    let app = axum::Router::new().route(
        "/disk.qcow2",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Everything a distribution does, against one Glance through `c`; `tag` keeps the images of
/// concurrent scenarios apart.
async fn scenario(c: &GlanceClient, tmp: &Path, tag: &str) {
    // check
    let health = c.check().await.expect("check");
    assert!(health.endpoint.starts_with("http://127.0.0.1:"), "{health:?}");
    assert!(health.import_methods.iter().any(|m| m == "web-download"), "{health:?}");
    assert_eq!(c.endpoint().await.expect("endpoint"), health.endpoint);

    // create + upload a real qcow2; the hashes are the ones of our bytes
    let data = qcow2(tmp, &format!("{tag}-a.qcow2"), 16);
    let name = format!("{tag}-upload");
    let props = [("onap_image_id", tag), ("onap_note", "12 34")];
    let created = c.create_image(&new_image(&name, &props)).await.expect("create");
    assert_eq!(created.status, "queued");
    assert_eq!(created.name.as_deref(), Some(name.as_str()));
    assert_eq!(created.min_disk, 1);
    assert_eq!(created.min_ram, 64);
    assert_eq!(created.properties.get("onap_image_id").map(String::as_str), Some(tag));
    c.upload(&created.id, reqwest::Body::from(data.clone()), Some(data.len() as u64))
        .await
        .expect("upload");
    let img = wait_for(c, &created.id, "active", |i| i.status == "active").await;
    let sha512 = hex::encode(Sha512::digest(&data));
    assert_eq!(img.size, Some(data.len() as u64));
    assert_eq!(img.virtual_size, Some(16 << 20));
    assert_eq!(img.checksum, Some(hex::encode(Md5::digest(&data))));
    assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(img.os_hash_value.as_deref(), Some(sha512.as_str()));
    assert_eq!(img.disk_format.as_deref(), Some("qcow2"));
    assert_eq!(img.properties.get("onap_note").map(String::as_str), Some("12 34"));
    // the inventory form (JSON) round-trips
    let stored = serde_json::to_string(&img).expect("serialize");
    assert_eq!(serde_json::from_str::<GlanceImage>(&stored).expect("parse"), img);

    // download round-trips the bytes
    let (size, stream) = c.download(&img.id).await.expect("download");
    assert_eq!(size, Some(data.len() as u64));
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("the data");
    assert_eq!(chunks.concat(), data);

    // filters: name, os_hash_value, a custom property
    let by_name = c.list_images(&[("name", name.as_str())]).await.expect("list by name");
    assert_eq!(by_name.iter().map(|i| &i.id).collect::<Vec<_>>(), vec![&img.id]);
    let by_hash = c
        .list_images(&[("os_hash_value", sha512.as_str())])
        .await
        .expect("list by hash");
    assert_eq!(by_hash.iter().map(|i| &i.id).collect::<Vec<_>>(), vec![&img.id]);
    let by_prop = c
        .list_images(&[("onap_image_id", tag)])
        .await
        .expect("list by property");
    assert_eq!(by_prop.iter().map(|i| &i.id).collect::<Vec<_>>(), vec![&img.id]);
    assert!(c
        .list_images(&[("onap_image_id", "no-such-value")])
        .await
        .expect("list")
        .is_empty());

    // update: replace the name, add a property, replace the tags
    let updated = c
        .update(
            &img.id,
            &[
                PatchOp::Replace {
                    path: "/name".into(),
                    value: json!(format!("{name}-renamed")),
                },
                PatchOp::Add {
                    path: "/onap_added".into(),
                    value: json!("yes"),
                },
                PatchOp::Replace {
                    path: "/tags".into(),
                    value: json!(["t1", "t2"]),
                },
            ],
        )
        .await
        .expect("update");
    assert_eq!(updated.name, Some(format!("{name}-renamed")));
    assert_eq!(updated.properties.get("onap_added").map(String::as_str), Some("yes"));
    let mut tags = updated.tags.clone();
    tags.sort();
    assert_eq!(tags, vec!["t1", "t2"]);
    let refused = c
        .update(
            &img.id,
            &[PatchOp::Add {
                path: "/os_glance_x".into(),
                value: json!("1"),
            }],
        )
        .await
        .expect_err("os_glance_ refused");
    assert_eq!(refused.kind, AdapterErrorKind::Refused);
    assert_eq!(refused.status, None, "refused before sending");

    // pagination: 5 images listed 2 per page
    let page_tag = format!("{tag}-page");
    let mut made = Vec::new();
    for i in 0..5 {
        let im = c
            .create_image(&new_image(
                &format!("{tag}-p{i}"),
                &[("onap_page_group", page_tag.as_str())],
            ))
            .await
            .expect("create");
        made.push(im.id);
    }
    let paged = c
        .clone()
        .with_page_size(2)
        .list_images(&[("onap_page_group", page_tag.as_str())])
        .await
        .expect("paged list");
    let mut got: Vec<String> = paged.into_iter().map(|i| i.id).collect();
    got.sort();
    made.sort();
    assert_eq!(got, made, "every image once, across 3 pages");

    // web-download from a server of ours, polled to active
    let web = qcow2(tmp, &format!("{tag}-w.qcow2"), 8);
    let base = serve(web.clone()).await;
    let wimg = c
        .create_image(&new_image(&format!("{tag}-web"), &[]))
        .await
        .expect("create");
    c.import_web_download(&wimg.id, &format!("{base}/disk.qcow2"))
        .await
        .expect("import");
    let wimg = wait_for(c, &wimg.id, "active or failed", |i| {
        i.status == "active" || failed_import(i)
    })
    .await;
    assert_eq!(wimg.status, "active", "{wimg:?}");
    assert_eq!(wimg.size, Some(web.len() as u64));
    assert_eq!(wimg.checksum, Some(hex::encode(Md5::digest(&web))));
    assert_eq!(c.import_failure(&wimg.id).await.expect("tasks"), None);

    // a failed import (404) is reported by import_failure
    let fimg = c
        .create_image(&new_image(&format!("{tag}-fail"), &[]))
        .await
        .expect("create");
    c.import_web_download(&fimg.id, &format!("{base}/missing.qcow2"))
        .await
        .expect("import accepted");
    wait_for(c, &fimg.id, "failed", failed_import).await;
    let deadline = Instant::now() + SETTLE;
    let why = loop {
        if let Some(why) = c.import_failure(&fimg.id).await.expect("tasks") {
            break why;
        }
        assert!(Instant::now() < deadline, "no failed task for {}", fimg.id);
        tokio::time::sleep(Duration::from_millis(200)).await; // polling interval
    };
    assert!(why.contains("web-download") && why.contains("/missing.qcow2"), "{why}");
    eprintln!("{tag}: failed import reported as: {why}");

    // a queued image has no data to download
    let e = c.download(&fimg.id).await.err().expect("no data");
    assert_eq!(e.kind, AdapterErrorKind::Conflict);

    // delete (twice: the second is a no-op), then get_image is None
    for id in made.iter().chain([&img.id, &wimg.id, &fimg.id]) {
        c.delete_image(id).await.expect("delete");
    }
    c.delete_image(&img.id).await.expect("delete again");
    assert_eq!(c.get_image(&img.id).await.expect("get"), None);
    assert!(c
        .list_images(&[("name", name.as_str())])
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noauth_direct_endpoint() {
    let g = Glance::start(Mode::NoAuth).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let c = direct(&g.endpoint);
    // With a trailing slash too.
    let c2 = direct(&format!("{}/", g.endpoint));
    assert_eq!(c2.endpoint().await.expect("endpoint"), g.endpoint);
    scenario(&c, tmp.path(), "noauth").await;
    assert_eq!(c.keystone_authentications(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_password_and_application_credential() {
    // Glance validates every token with Keystone (no cache), so that a revoked token is refused.
    let g = Glance::start_with(Mode::Keystone, &[("GLANCE_TOKEN_CACHE_TIME", "-1")]).await;
    let tmp = tempfile::tempdir().expect("tmp");

    // Without a token Glance refuses: the endpoint really is behind Keystone.
    let anon = direct(&g.endpoint).list_images(&[]).await.expect_err("401");
    assert_eq!(anon.kind, AdapterErrorKind::Auth);

    // A wrong password is Auth, and the password is in no message.
    let wrong = keystone_password(&g, "not-the-password-xyz");
    let e = wrong.check().await.expect_err("wrong password");
    assert_eq!(e.kind, AdapterErrorKind::Auth, "{e}");
    assert!(!e.message.contains("not-the-password-xyz"));
    assert!(!format!("{wrong:?}").contains("not-the-password-xyz"));

    // Password, scoped to project demo: the whole scenario on one token.
    let c = keystone_password(&g, &g.demo_password);
    scenario(&c, tmp.path(), "ks-password").await;
    assert_eq!(
        c.keystone_authentications(),
        1,
        "the token is reused across calls (and clones)"
    );

    // A token Glance refuses (revoked: disabling the user revokes its tokens) is replaced once.
    let uid = g.user_id("demo").await;
    for enabled in [false, true] {
        let (status, _) = g
            .admin(
                reqwest::Method::PATCH,
                &format!("/users/{uid}"),
                Some(json!({"user": {"enabled": enabled}})),
            )
            .await;
        assert_eq!(status, 200);
    }
    // Keystone compares issue times in whole seconds: a token issued in the second of the
    // revocation would be revoked too, so wait for the next second.
    let revoked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        <= revoked_at
    {
        tokio::time::sleep(Duration::from_millis(50)).await; // polling the clock
    }
    let listed = c.list_images(&[]).await.expect("list after revocation");
    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(c.keystone_authentications(), 2, "re-authenticated once on the 401");

    // An application credential of demo: check, upload, get, delete.
    let (id, secret) = g.demo_app_credential("im-test").await;
    let mut auth = KeystoneAuth::new(
        g.auth_url
            .clone()
            .expect("auth url")
            .trim_end_matches("/v3")
            .to_string(),
        KeystoneCredential::ApplicationCredential {
            id,
            secret: secret.clone(),
        },
    );
    auth.region = Some(g.region.clone());
    let ac = GlanceClient::new(config(GlanceEndpoint::Keystone(auth.clone()))).expect("client");
    assert!(!format!("{ac:?}").contains(&secret));
    let health = ac.check().await.expect("check with an application credential");
    assert_eq!(health.endpoint, g.endpoint);
    let data = qcow2(tmp.path(), "ac.qcow2", 4);
    let img = ac
        .create_image(&new_image("ks-appcred", &[("onap_image_id", "ac")]))
        .await
        .expect("create");
    // A stream of unknown length: sent chunked.
    let chunks: Vec<std::io::Result<bytes::Bytes>> = data
        .chunks(64 << 10)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    ac.upload(&img.id, reqwest::Body::wrap_stream(futures::stream::iter(chunks)), None)
        .await
        .expect("upload, chunked");
    let img = wait_for(&ac, &img.id, "active", |i| i.status == "active").await;
    assert_eq!(img.os_hash_value, Some(hex::encode(Sha512::digest(&data))));
    // The same project as the password user's.
    assert_eq!(
        c.get_image(&img.id).await.expect("get").map(|i| i.owner),
        Some(img.owner.clone())
    );
    ac.delete_image(&img.id).await.expect("delete");
    assert_eq!(ac.get_image(&img.id).await.expect("get"), None);
    assert_eq!(ac.keystone_authentications(), 1);

    // A catalog without the asked region is a clear Other error naming it.
    auth.region = Some("Nowhere".into());
    let none = GlanceClient::new(config(GlanceEndpoint::Keystone(auth))).expect("client");
    let e = none.endpoint().await.expect_err("no such region");
    assert_eq!(e.kind, AdapterErrorKind::Other);
    assert!(e.message.contains("Nowhere") && e.message.contains("image"), "{e}");
}

#[tokio::test]
async fn refused_connection_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port(); // released at once: nobody listens there
    let c = direct(&format!("http://127.0.0.1:{port}"));
    let e = c.check().await.expect_err("refused");
    assert_eq!(e.kind, AdapterErrorKind::Transient, "{e}");
    let e = c.get_image("abc").await.expect_err("refused");
    assert!(e.is_transient());
    let ks = KeystoneAuth::new(
        format!("http://127.0.0.1:{port}/v3"),
        KeystoneCredential::ApplicationCredential {
            id: "x".into(),
            secret: "y".into(),
        },
    );
    let e = GlanceClient::new(config(GlanceEndpoint::Keystone(ks)))
        .expect("client")
        .check()
        .await
        .expect_err("keystone refused");
    assert_eq!(e.kind, AdapterErrorKind::Transient, "{e}");
}

#[tokio::test]
async fn reserved_properties_are_refused_locally() {
    // Nobody listens: a request sent would be Transient, so Refused proves nothing was sent.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let c = direct(&format!("http://127.0.0.1:{port}"));
    let mut req = new_image("x", &[]);
    req.properties = BTreeMap::from([("os_glance_import_task".to_string(), "t".to_string())]);
    let e = c.create_image(&req).await.expect_err("refused");
    assert_eq!(e.kind, AdapterErrorKind::Refused, "{e}");
    assert!(e.message.contains("os_glance_import_task"));
    let e = c.get_image("../etc").await.expect_err("not an id");
    assert_eq!(e.kind, AdapterErrorKind::Refused);
    assert!(GlanceClient::new(GlanceConfig {
        ca_pem: Some("not a pem".into()),
        ..config(GlanceEndpoint::Direct {
            url: "https://x".into()
        })
    })
    .is_err());
}
