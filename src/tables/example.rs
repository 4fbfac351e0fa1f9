//! The example schema's capture settings: what `[capture]` means when the
//! config has none.
//!
//! Owns: the example schema's table list and secret columns.
//! Must never: describe the tables' columns (the database does that, through
//! the same catalog path as any application's tables).

/// The example schema's tables, parents first.
pub const EXAMPLE_TABLES: [&str; 3] = ["projects", "jobs", "keys"];

/// Key content is a secret.
pub const EXAMPLE_SECRET_COLUMNS: [&str; 1] = ["keys.content"];

/// `(tables, secret_columns)` for a config without `[capture]`.
pub fn example_capture() -> (Vec<String>, Vec<String>) {
    (
        EXAMPLE_TABLES.iter().map(|s| s.to_string()).collect(),
        EXAMPLE_SECRET_COLUMNS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )
}
