//! ONAP MultiCloud's image API, the way ONAP modules reach a cloud region's Glance without
//! holding its credentials. From MultiCloud's API description (`multivim.image` swagger of
//! the openstack plugins):
//!
//! * v0: `{base}/v0/{cloud-owner}_{region}/{tenant}/images`, v1:
//!   `{base}/v1/{cloud-owner}/{region}/{tenant}/images` (`base` e.g.
//!   `http://msb:80/api/multicloud-titaniumcloud`).
//! * `POST …/images` with `name`, `imagePath` (a URL MultiCloud fetches the bytes from: one we
//!   serve), `imageType` (Glance's disk_format), `containerFormat`, `visibility` and
//!   `properties` (a list of `{keyName, value}`); the answer is the image with `returnCode`
//!   0 (an image of that name was already there) or 1 (created). MultiCloud then copies the
//!   bytes into Glance in the background.
//! * `GET …/images[?name=]` answers `{vimId, vimName, tenantId, images: [...]}`; `GET` and
//!   `DELETE …/images/{id}` read and remove one. Images carry Glance's fields, with
//!   `disk_format`, `container_format` and `project_id` renamed `imageType`,
//!   `containerFormat` and `tenantId`.
//!
//! There is no installable MultiCloud: the tests run a server that implements this API as
//! described above.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{http_client, json_answer, AdapterError, AdapterErrorKind, AdapterResult};

#[derive(Debug, Clone)]
pub struct MultiCloudConfig {
    pub url: String,
    pub cloud_owner: String,
    pub region: String,
    pub tenant: String,
    /// `v0` or `v1`.
    pub api_version: String,
    pub ca_pem: Option<String>,
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
}

/// An image as MultiCloud shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MultiCloudImage {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// A number or a string (the API description says string).
    #[serde(default)]
    pub size: Option<Value>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default, rename = "imageType")]
    pub image_type: Option<String>,
    #[serde(default, rename = "containerFormat")]
    pub container_format: Option<String>,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default, rename = "returnCode")]
    pub return_code: Option<i64>,
    /// Every other field.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl MultiCloudImage {
    pub fn size(&self) -> Option<u64> {
        match &self.size {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    }

    /// A custom property's value: a top-level string field, as Glance shows properties.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.other.get(key).and_then(Value::as_str)
    }
}

/// What to create.
#[derive(Debug, Clone, Serialize)]
pub struct NewMultiCloudImage {
    pub name: String,
    #[serde(rename = "imagePath")]
    pub image_path: String,
    #[serde(rename = "imageType")]
    pub image_type: String,
    #[serde(rename = "containerFormat")]
    pub container_format: String,
    pub visibility: String,
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Property {
    #[serde(rename = "keyName")]
    pub key_name: String,
    pub value: String,
}

#[derive(Deserialize)]
struct ImageList {
    #[serde(default)]
    images: Vec<MultiCloudImage>,
}

#[derive(Clone)]
pub struct MultiCloudClient {
    http: reqwest::Client,
    images_url: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for MultiCloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiCloudClient")
            .field("images_url", &self.images_url)
            .finish()
    }
}

impl MultiCloudClient {
    pub fn new(cfg: MultiCloudConfig) -> AdapterResult<Self> {
        let seg = urlencode;
        let base = cfg.url.trim_end_matches('/');
        let images_url = match cfg.api_version.as_str() {
            "v0" => format!(
                "{base}/v0/{}/{}/images",
                seg(&format!("{}_{}", cfg.cloud_owner, cfg.region)),
                seg(&cfg.tenant)
            ),
            "v1" => format!(
                "{base}/v1/{}/{}/{}/images",
                seg(&cfg.cloud_owner),
                seg(&cfg.region),
                seg(&cfg.tenant)
            ),
            other => {
                return Err(AdapterError::new(
                    AdapterErrorKind::Other,
                    format!("MultiCloud api_version {other:?}: v0 or v1"),
                ))
            }
        };
        Ok(Self {
            http: http_client("MultiCloud", cfg.connect_timeout, cfg.ca_pem.as_deref())?,
            images_url,
            call_timeout: cfg.call_timeout,
        })
    }

    pub fn images_url(&self) -> &str {
        &self.images_url
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> AdapterResult<reqwest::Response> {
        req.timeout(self.call_timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| AdapterError::transport(what, &e))
    }

    /// The region answers a list of its images.
    pub async fn check(&self) -> AdapterResult<()> {
        self.list(None).await.map(|_| ())
    }

    /// The region's images (those named `name` when given).
    pub async fn list(&self, name: Option<&str>) -> AdapterResult<Vec<MultiCloudImage>> {
        let mut req = self.http.get(&self.images_url);
        if let Some(n) = name {
            req = req.query(&[("name", n)]);
        }
        let resp = self.send(req, "MultiCloud image list").await?;
        let list: ImageList = json_answer(resp, "MultiCloud image list").await?;
        Ok(list.images)
    }

    pub async fn get(&self, id: &str) -> AdapterResult<Option<MultiCloudImage>> {
        let url = format!("{}/{}", self.images_url, urlencode(id));
        let resp = self.send(self.http.get(url), "MultiCloud image").await?;
        match json_answer(resp, "MultiCloud image").await {
            Ok(img) => Ok(Some(img)),
            Err(e) if e.kind == AdapterErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create an image whose bytes MultiCloud fetches from `image_path`; the answer's
    /// `return_code` says whether it was already there (0) or created (1).
    pub async fn create(&self, img: &NewMultiCloudImage) -> AdapterResult<MultiCloudImage> {
        let resp = self
            .send(self.http.post(&self.images_url).json(img), "MultiCloud image create")
            .await?;
        json_answer(resp, "MultiCloud image create").await
    }

    /// Remove an image; one already gone is fine.
    pub async fn delete(&self, id: &str) -> AdapterResult<()> {
        let url = format!("{}/{}", self.images_url, urlencode(id));
        let resp = self.send(self.http.delete(url), "MultiCloud image delete").await?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) || status == 404 {
            return Ok(());
        }
        let body = super::read_capped(resp, 64 * 1024, "MultiCloud image delete").await?;
        Err(AdapterError::from_status(
            status,
            "MultiCloud image delete",
            &String::from_utf8_lossy(&body),
        ))
    }
}

/// A path segment: everything but RFC 3986's unreserved characters escaped.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: &str) -> MultiCloudConfig {
        MultiCloudConfig {
            url: "http://msb/api/multicloud/".into(),
            cloud_owner: "CloudOwner".into(),
            region: "RegionOne".into(),
            tenant: "t 1".into(),
            api_version: v.into(),
            ca_pem: None,
            call_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn builds_both_api_versions_paths() {
        let v0 = MultiCloudClient::new(cfg("v0")).unwrap();
        assert_eq!(
            v0.images_url(),
            "http://msb/api/multicloud/v0/CloudOwner_RegionOne/t%201/images"
        );
        let v1 = MultiCloudClient::new(cfg("v1")).unwrap();
        assert_eq!(
            v1.images_url(),
            "http://msb/api/multicloud/v1/CloudOwner/RegionOne/t%201/images"
        );
        assert!(MultiCloudClient::new(cfg("v2")).is_err());
    }

    #[test]
    fn reads_sizes_as_numbers_or_strings() {
        let a: MultiCloudImage =
            serde_json::from_str(r#"{"id":"1","size":"42","returnCode":0,"im_digest":"d"}"#).unwrap();
        assert_eq!(
            (a.size(), a.return_code, a.property("im_digest")),
            (Some(42), Some(0), Some("d"))
        );
        let b: MultiCloudImage = serde_json::from_str(r#"{"id":"1","size":42}"#).unwrap();
        assert_eq!(b.size(), Some(42));
    }
}
