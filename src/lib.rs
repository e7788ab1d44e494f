//! Image Manager: an OCI-registry-compatible image repository and the ONAP image catalog.
//!
//! Layers: [`http`] (surfaces) → [`core`] (rules) → [`storage`] (blob store + metadata store)
//! and, beside it, [`adapters`] (the remote VIMs and registries images are distributed to),
//! all speaking the OCI vocabulary of the leaf module [`oci`].

pub mod adapters;
pub mod auth;
pub mod config;
pub mod core;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod oci;
pub mod server;
pub mod storage;
