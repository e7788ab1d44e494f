//! The OpenAPI 3 document of `/api/v1`, generated from the handlers' annotations (utoipa) and
//! served at `/api/v1/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;

/// An RFC 9457 problem: every error of `/api/v1` (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemDoc {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// A stable error code (the registry's: DENIED, UNAUTHORIZED, NAME_INVALID, REFUSED, ...).
    pub code: String,
    /// Refusals: every finding (bad files of a package, the rule an image broke).
    pub problems: Option<Vec<String>>,
}

/// Raw bytes of a request body (a disk image, a package, a chunk).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Image Manager API",
        description = "The ONAP image catalog (container images, VM images, VNF packages, Helm charts, \
                       artifacts), its distribution to VIMs and the administration of the registry. Errors are RFC 9457 \
                       application/problem+json. With --auth token, authenticate with HTTP Basic \
                       (users and robot accounts)."
    ),
    paths(
        super::catalog::list_entries,
        super::catalog::get_entry,
        super::catalog::update_entry,
        super::catalog::delete_entry,
        super::catalog::upload_image,
        super::catalog::upload_package,
        super::catalog::start_upload,
        super::catalog::upload_status,
        super::catalog::append_upload,
        super::catalog::finish_upload,
        super::catalog::cancel_upload,
        super::api::list_namespaces,
        super::api::get_namespace,
        super::api::set_quota,
        super::api::clear_quota,
        super::api::set_visibility,
        super::api::list_members,
        super::api::set_member,
        super::api::remove_member,
        super::api::list_users,
        super::api::add_user,
        super::api::delete_user,
        super::api::disable_user,
        super::api::list_robots,
        super::api::add_robot,
        super::api::delete_robot,
        super::api::disable_robot,
        super::api::list_audit,
        super::vims::list_vims,
        super::vims::register_vim,
        super::vims::get_vim,
        super::vims::update_vim,
        super::vims::remove_vim,
        super::vims::test_vim,
        super::vims::vim_images,
        super::vims::sync_vim,
        super::vims::import_image,
        super::vims::list_distributions,
        super::vims::create_distribution,
        super::vims::get_distribution,
        super::vims::distribution_events,
        super::vims::cancel_distribution,
        super::vims::retry_distribution,
        super::vims::create_undistribution,
        super::vims::entry_vims,
        openapi_json,
    ),
    components(schemas(ProblemDoc)),
    modifiers(&Security),
    tags(
        (name = "catalog", description = "Catalog entries, VM image upload, VNF package onboarding"),
        (name = "admin", description = "Namespaces, quotas, members, users, robots, audit log"),
        (name = "distribution", description = "VIMs (OpenStack Glance, OCI registries, ONAP MultiCloud): register, \
                                              check, inventory, import; distribution and un-distribution jobs of catalog \
                                              entries to VIMs, their progress (also as server-sent events), cancel and retry"),
    )
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "catalog",
    responses((status = 200, description = "The OpenAPI 3 document of /api/v1", content_type = "application/json", body = Object)),
    security(())
)]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(document())
}

/// The document as JSON. utoipa 5.5 writes the fields of Link objects in snake case
/// (`operation_id`); OpenAPI names them in camel case (`operationId`), so they are renamed here.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    fix_links(&mut doc);
    doc
}

fn fix_links(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut() {
                    if let serde_json::Value::Object(l) = link {
                        for (from, to) in [
                            ("operation_id", "operationId"),
                            ("operation_ref", "operationRef"),
                            ("request_body", "requestBody"),
                        ] {
                            if let Some(x) = l.remove(from) {
                                l.insert(to.into(), x);
                            }
                        }
                    }
                }
            }
            for child in map.values_mut() {
                fix_links(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fix_links),
        _ => {}
    }
}
