//! Identifiers and opaque cursors.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// A new sortable identifier (UUID v7: ids created later sort later).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `id` has the shape of a Tandem id (checked before it reaches a query).
pub fn is_valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

/// Encodes a keyset position as an opaque cursor.
pub fn encode_cursor(position: &str) -> String {
    URL_SAFE_NO_PAD.encode(position.as_bytes())
}

/// Decodes an opaque cursor; `None` when it was not produced by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}
