//! Canonical proto JSON for Envoy messages, and secret redaction.
//!
//! Envoy messages are printed through `prost-reflect` with the descriptor set that ships in
//! the envoy-types package (found by `build.rs`), so the output is exactly what Envoy's own
//! JSON parser accepts and its admin `/config_dump` shows: camelCase names, `@type` in every
//! `Any`, durations as `"5s"`.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

static DESCRIPTORS: &[u8] = include_bytes!(env!("ENVOY_DESCRIPTOR_SET"));

/// Every Envoy (and well-known) message type.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS)
            .expect("the descriptor set shipped with envoy-types decodes")
    })
}

/// Errors converting a message to JSON.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The descriptor set does not know the message type.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The bytes do not decode as that type.
    #[error("decoding {type_name}: {source}")]
    Decode {
        /// Full message name.
        type_name: String,
        /// Cause.
        #[source]
        source: prost::DecodeError,
    },
    /// serde_json refused the value.
    #[error("serializing {type_name}: {source}")]
    Serialize {
        /// Full message name.
        type_name: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Converts encoded bytes of the named message type to canonical JSON.
pub fn bytes_to_json(type_name: &str, bytes: &[u8]) -> Result<Value, Error> {
    let desc = pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| Error::UnknownType(type_name.to_owned()))?;
    let msg = DynamicMessage::decode(desc, bytes).map_err(|source| Error::Decode {
        type_name: type_name.to_owned(),
        source,
    })?;
    let options = SerializeOptions::new().stringify_64_bit_integers(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| Error::Serialize {
            type_name: type_name.to_owned(),
            source,
        })
}

/// Converts a message to canonical JSON.
pub fn to_json<M: Message + prost::Name>(m: &M) -> Result<Value, Error> {
    bytes_to_json(&M::full_name(), &m.encode_to_vec())
}

/// Converts a message to canonical JSON with `@type` first, as inside an `Any`.
pub fn to_typed_json<M: Message + prost::Name>(m: &M) -> Result<Value, Error> {
    let mut body = to_json(m)?;
    let mut out = serde_json::Map::new();
    out.insert("@type".into(), Value::String(M::type_url()));
    if let Value::Object(fields) = &mut body {
        out.append(fields);
    }
    Ok(Value::Object(out))
}

/// Placeholder that replaces secret values.
pub const REDACTED: &str = "[redacted]";

/// Fields of Envoy messages that carry AUTH material or private keys as `DataSource`s.
const SECRET_FIELDS: &[&str] = &[
    "privateKey",
    "authPassword",
    "authUsername",
    "downstreamAuthPassword",
    "downstreamAuthPasswords",
    "downstreamAuthUsername",
];

/// Replaces the inline value of every AUTH `DataSource` in canonical JSON with
/// [`REDACTED`]. File and environment variable sources only name where the secret is and
/// are kept.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_FIELDS.contains(&k.as_str()) {
                    redact_data_sources(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn redact_data_sources(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(redact_data_sources),
        Value::Object(map) => {
            for key in ["inlineString", "inlineBytes"] {
                if let Some(v) = map.get_mut(key) {
                    *v = Value::String(REDACTED.into());
                }
            }
        }
        _ => {}
    }
}
