//! The pure parsers of Image Manager: nothing here does I/O of its own (parsers read from a
//! `Read`/`Read + Seek` they are given, or from byte slices and strings), so they are tested and
//! fuzzed (`fuzz/`) without building the server.
//!
//! * [`inspect`]: the streaming disk-image inspector (qcow2, raw, vmdk, vhd, vhdx, iso);
//! * [`csar`]: the ETSI SOL004 VNF package (CSAR) reader;
//! * [`oci`]: OCI names, digests and manifests;
//! * [`ranges`]: the `Range` and `Content-Range` request headers;
//! * [`scope`]: Docker token scopes.

pub mod csar;
pub mod inspect;
pub mod oci;
pub mod ranges;
pub mod scope;
