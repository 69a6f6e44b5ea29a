//! Identifiers (opaque page cursors are in `db::pages`).

/// A new sortable identifier (UUID v7: ids created later sort later).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `id` has the shape of a Tandem id (checked before it reaches a query).
pub fn is_valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}
