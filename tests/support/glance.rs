//! A real OpenStack Glance 33 for the Rust tests, with no auth or behind a real Keystone 30:
//! `tests/services/glance/start.sh` on free loopback ports in a temporary data dir, stopped
//! (`stop.sh`) and removed when dropped. The venvs come from scripts/install-test-deps.sh
//! (`start.sh --install-only`); the tests never pip-install (`GLANCE_NO_INSTALL=1`), so a
//! missing venv fails the test with the command to run.
//! Included by the test crates that need it (`#[path = "support/glance.rs"] mod glance;`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Glance trusts identity headers; a request without them is project `noauth-project`, admin.
    NoAuth,
    /// Glance behind keystonemiddleware; Keystone has the users `admin` and `demo` (member of
    /// project `demo`) and the catalog entry `image` in region `RegionOne`.
    Keystone,
}

pub struct Glance {
    pub mode: Mode,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Keystone mode: `http://127.0.0.1:PORT/v3`.
    pub auth_url: Option<String>,
    pub region: String,
    pub demo_user: String,
    pub demo_password: String,
    pub demo_project: String,
    pub admin_password: String,
    data_dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn services_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/glance")
}

impl Glance {
    /// Start one Glance (and its Keystone); a Glance that does not come up fails the test.
    pub async fn start(mode: Mode) -> Glance {
        Self::start_with(mode, &[]).await
    }

    /// [`Self::start`] with extra environment for start.sh (e.g. `GLANCE_TOKEN_CACHE_TIME=-1`).
    pub async fn start_with(mode: Mode, env: &[(&str, &str)]) -> Glance {
        let data_dir = tempfile::Builder::new()
            .prefix("im-glance-")
            .tempdir()
            .expect("a temporary data dir");
        let glance_port = free_port();
        let keystone_port = free_port();
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg(services_dir().join("start.sh"))
            .env("GLANCE_DATA_DIR", data_dir.path())
            .env("GLANCE_PORT", glance_port.to_string())
            .env("KEYSTONE_PORT", keystone_port.to_string())
            .env("GLANCE_NO_INSTALL", "1")
            .env(
                "GLANCE_AUTH",
                match mode {
                    Mode::NoAuth => "noauth",
                    Mode::Keystone => "keystone",
                },
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut glance = Glance {
            mode,
            endpoint: String::new(),
            auth_url: None,
            region: "RegionOne".into(),
            demo_user: "demo".into(),
            demo_password: "demo-secret".into(),
            demo_project: "demo".into(),
            admin_password: "admin-secret".into(),
            data_dir,
        };
        let out = cmd.output().await.expect("bash tests/services/glance/start.sh");
        if !out.status.success() {
            let logs = glance.logs();
            panic!(
                "glance start.sh failed ({}):\n{}\n{logs}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        glance.endpoint = vars
            .get("GLANCE_ENDPOINT")
            .cloned()
            .expect("start.sh prints GLANCE_ENDPOINT");
        assert_eq!(glance.endpoint, format!("http://127.0.0.1:{glance_port}"));
        if mode == Mode::Keystone {
            glance.auth_url = Some(vars.get("OS_AUTH_URL").cloned().expect("OS_AUTH_URL"));
            glance.demo_password = vars
                .get("KEYSTONE_DEMO_PASSWORD")
                .cloned()
                .expect("KEYSTONE_DEMO_PASSWORD");
            glance.admin_password = vars.get("OS_PASSWORD").cloned().expect("OS_PASSWORD");
            glance.region = vars.get("OS_REGION_NAME").cloned().expect("OS_REGION_NAME");
        }
        glance
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The last lines of the service logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["glance-api.log", "glance-api.gunicorn.log", "keystone.log"] {
            let p = self.data_dir.path().join("log").join(name);
            if let Ok(text) = std::fs::read_to_string(&p) {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(40);
                out.push_str(&format!("--- {}\n{}\n", p.display(), lines[from..].join("\n")));
            }
        }
        out
    }

    fn keystone_url(&self) -> &str {
        self.auth_url.as_deref().expect("a Glance in keystone mode")
    }

    /// A token (and the token document) for `user` with `password`, scoped to `project`.
    pub async fn token(&self, user: &str, password: &str, project: &str) -> (String, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/auth/tokens", self.keystone_url()))
            .json(&json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user, "domain": {"id": "default"}, "password": password}}},
                "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}))
            .send()
            .await
            .expect("keystone answers");
        assert_eq!(r.status().as_u16(), 201, "token for {user}");
        let token = r.headers()["x-subject-token"]
            .to_str()
            .expect("token header")
            .to_string();
        (token, r.json().await.expect("token JSON"))
    }

    /// Call Keystone as admin; the answer's status and JSON (Null when empty).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (token, _) = self.token("admin", &self.admin_password.clone(), "admin").await;
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.keystone_url()))
            .header("X-Auth-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("keystone answers");
        let status = r.status().as_u16();
        let text = r.text().await.expect("keystone body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The id of the Keystone user `name`.
    pub async fn user_id(&self, name: &str) -> String {
        let (status, v) = self
            .admin(reqwest::Method::GET, &format!("/users?name={name}"), None)
            .await;
        assert_eq!(status, 200);
        v["users"][0]["id"].as_str().expect("the user exists").to_string()
    }

    /// A new application credential of the `demo` user on project `demo`: (id, secret).
    pub async fn demo_app_credential(&self, name: &str) -> (String, String) {
        let (token, doc) = self
            .token(&self.demo_user, &self.demo_password, &self.demo_project)
            .await;
        let user_id = doc["token"]["user"]["id"].as_str().expect("user id");
        let r = reqwest::Client::new()
            .post(format!(
                "{}/users/{user_id}/application_credentials",
                self.keystone_url()
            ))
            .header("X-Auth-Token", token)
            .json(&json!({"application_credential": {"name": name}}))
            .send()
            .await
            .expect("keystone answers");
        assert_eq!(r.status().as_u16(), 201, "create application credential");
        let v: Value = r.json().await.expect("JSON");
        let ac = &v["application_credential"];
        (
            ac["id"].as_str().expect("id").to_string(),
            ac["secret"].as_str().expect("secret").to_string(),
        )
    }
}

impl Drop for Glance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("glance logs ({:?}):\n{}", self.mode, self.logs());
        }
        let _ = Command::new("bash")
            .arg(services_dir().join("stop.sh"))
            .env("GLANCE_DATA_DIR", self.data_dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
