//! PostgreSQL capture and fence triggers, generated from the table
//! description and kept in step with it.
//!
//! Owns: the text of each captured table's capture function
//! (`us_capture_<table>`: stage every row change in `us_capture` in the
//! log row format of [`super::values`] and wake the agent with NOTIFY), the
//! three triggers understudy puts on a captured table (`us_fence_write`,
//! `us_fence_truncate`, `us_capture`), and their synchronisation at `init`
//! (create what is missing or changed, drop them from tables no longer
//! captured) and check at start.
//! Must never: run outside `init`'s transaction, take a table's exclusive
//! lock when nothing changed (re-running `init` on a busy active must not
//! stall its writers), or capture the agent's own applies (every function
//! stands down while `understudy.applying` is on).
//!
//! Row triggers of one event fire in name order, and a foreign key's
//! cascade actions are triggers named `RI_ConstraintTrigger_...` (byte
//! order: before `us_capture`): the deletes of a parent's children are
//! staged before the parent's own delete, an order valid for any replay,
//! foreign keys on or off.

use super::catalog::{quote_ident, quote_literal, schema_and_table};
use super::conn::query_error;
use super::values::{Carrier, Slot, TableCodec, Tables};
use crate::config::redact_url;
use crate::store::{StoreError, StoreResult};
use crate::tables::{CatalogError, TableName};
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

/// The triggers of a captured table: `(name, timing and events, level,
/// function)`; the capture function's name is per table.
const FENCE_WRITE: &str = "us_fence_write";
const FENCE_TRUNCATE: &str = "us_fence_truncate";
const CAPTURE: &str = "us_capture";

/// The capture function's name: `us_capture_<table>` when the name is a
/// plain identifier (the example schema keeps the names it always had),
/// otherwise made plain and told apart by a short hash of the real name.
pub(super) fn function_name(t: &TableName) -> String {
    let s = t.as_str();
    let plain = !s.is_empty()
        && s.len() <= 48
        && !s.contains("__")
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        return format!("us_capture_{s}");
    }
    let cleaned: String = s
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let h = Sha256::digest(s.as_bytes());
    format!("us_capture_{cleaned}_{}", hex::encode(&h[..4]))
}

/// `ARRAY[...]` of the given slots' carrier values per carrier, in the
/// column order of a log row (`i, r, b, t, x`); NULL for an empty carrier.
fn arrays(slots: &[Slot], prefix: &str) -> String {
    let mut out = Vec::with_capacity(5);
    for c in Carrier::ALL {
        let items: Vec<String> = slots
            .iter()
            .filter(|s| s.carrier == c)
            .map(|s| s.capture_expr(prefix))
            .collect();
        out.push(if items.is_empty() {
            "NULL".to_string()
        } else {
            format!("ARRAY[{}]", items.join(", "))
        });
    }
    out.join(", ")
}

/// The capture function's body (what `pg_proc.prosrc` holds).
pub(super) fn function_body(t: &TableCodec) -> String {
    let tbl = quote_literal(t.name.as_str());
    let key = t.key_slots();
    let row = |p: &str| {
        let cols: Vec<String> = key
            .iter()
            .map(|s| format!("{p}.{}", quote_ident(&s.column)))
            .collect();
        format!("ROW({})", cols.join(", "))
    };
    format!(
        "
DECLARE
    e bigint;
BEGIN
    IF current_setting('understudy.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO e FROM us_state WHERE id = 1;
    -- A key change is a delete of the old key and an upsert of the new row.
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND {old} IS DISTINCT FROM {new}) THEN
        INSERT INTO us_capture (epoch, tbl, op, i, r, b, t, x)
        VALUES (coalesce(e, 0), {tbl}, 2, {key_arrays});
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO us_capture (epoch, tbl, op, i, r, b, t, x)
        VALUES (coalesce(e, 0), {tbl}, 1, {image_arrays});
    END IF;
    PERFORM pg_notify('understudy', '');
    RETURN NULL;
END
",
        old = row("OLD"),
        new = row("NEW"),
        key_arrays = arrays(key, "OLD"),
        image_arrays = arrays(&t.slots, "NEW"),
    )
}

/// `CREATE OR REPLACE FUNCTION` of a table's capture function.
fn create_function(t: &TableCodec, body: &str) -> String {
    // A dollar-quote tag the body does not contain (a column could be
    // named anything).
    let mut tag = "$us$".to_string();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$us{n}$");
    }
    format!(
        "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {tag}{body}{tag}",
        function_name(&t.name)
    )
}

/// The three triggers of a table: `(name, CREATE TRIGGER ..., function)`.
fn triggers(t: &TableCodec) -> [(&'static str, String, String); 3] {
    let on = &t.sql_name;
    let f = function_name(&t.name);
    [
        (
            FENCE_WRITE,
            format!(
                "CREATE TRIGGER {FENCE_WRITE} BEFORE INSERT OR UPDATE OR DELETE ON {on} \
                 FOR EACH STATEMENT EXECUTE FUNCTION us_fence()"
            ),
            "us_fence".to_string(),
        ),
        (
            FENCE_TRUNCATE,
            format!(
                "CREATE TRIGGER {FENCE_TRUNCATE} BEFORE TRUNCATE ON {on} \
                 FOR EACH STATEMENT EXECUTE FUNCTION us_refuse_truncate()"
            ),
            "us_refuse_truncate".to_string(),
        ),
        (
            CAPTURE,
            format!(
                "CREATE TRIGGER {CAPTURE} AFTER INSERT OR UPDATE OR DELETE ON {on} \
                 FOR EACH ROW EXECUTE FUNCTION {f}()"
            ),
            f,
        ),
    ]
}

/// What a table has now: its capture function's body (if the function
/// exists) and its triggers of our names with their functions' names.
struct Present {
    body: Option<String>,
    triggers: Vec<(String, String)>,
}

async fn present<C: GenericClient>(c: &C, url: &str, t: &TableCodec) -> StoreResult<Present> {
    let err = |e: tokio_postgres::Error| query_error(url, &e);
    let f = function_name(&t.name);
    let body = c
        .query_opt(
            "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure($1)",
            &[&format!("{f}()")],
        )
        .await
        .map_err(err)?
        .map(|r| r.try_get::<_, String>(0))
        .transpose()
        .map_err(err)?;
    let (schema, table) = schema_and_table(&t.name);
    let rows = c
        .query(
            "SELECT tg.tgname::text, p.proname::text \
               FROM pg_trigger tg \
               JOIN pg_class cl ON cl.oid = tg.tgrelid \
               JOIN pg_namespace n ON n.oid = cl.relnamespace \
               JOIN pg_proc p ON p.oid = tg.tgfoid \
              WHERE n.nspname = $1 AND cl.relname = $2 AND NOT tg.tgisinternal \
                AND tg.tgname IN ('us_fence_write', 'us_fence_truncate', 'us_capture')",
            &[&schema, &table],
        )
        .await
        .map_err(err)?;
    let triggers = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(String, String)>, tokio_postgres::Error>>()
        .map_err(err)?;
    Ok(Present { body, triggers })
}

/// Bring every captured table's capture function and triggers in line
/// with the catalog, and remove ours from tables no longer captured. Only
/// what differs is touched: `CREATE OR REPLACE FUNCTION` takes no lock on
/// the table, `CREATE/DROP TRIGGER` does.
pub(super) async fn sync<C: GenericClient>(c: &C, url: &str, tables: &Tables) -> StoreResult<()> {
    let err = |e: tokio_postgres::Error| query_error(url, &e);
    drop_stale(c, url, tables).await?;
    for t in &tables.codecs {
        let have = present(c, url, t).await?;
        let body = function_body(t);
        if have.body.as_deref() != Some(body.as_str()) {
            c.batch_execute(&create_function(t, &body))
                .await
                .map_err(err)?;
        }
        for (name, create, function) in triggers(t) {
            let ok = have
                .triggers
                .iter()
                .any(|(n, f)| n == name && *f == function);
            if !ok {
                c.batch_execute(&format!(
                    "DROP TRIGGER IF EXISTS {name} ON {}; {create}",
                    t.sql_name
                ))
                .await
                .map_err(err)?;
            }
        }
    }
    Ok(())
}

/// Drop our triggers from tables that are not captured any more (their
/// changes would reach the log as changes of an unknown table), then the
/// capture functions no trigger uses.
async fn drop_stale<C: GenericClient>(c: &C, url: &str, tables: &Tables) -> StoreResult<()> {
    let err = |e: tokio_postgres::Error| query_error(url, &e);
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables
        .codecs
        .iter()
        .map(|t| schema_and_table(&t.name))
        .unzip();
    let stale = c
        .query(
            "SELECT DISTINCT format('%I.%I', n.nspname, cl.relname) \
               FROM pg_trigger tg \
               JOIN pg_class cl ON cl.oid = tg.tgrelid \
               JOIN pg_namespace n ON n.oid = cl.relnamespace \
               JOIN pg_proc p ON p.oid = tg.tgfoid \
              WHERE NOT tg.tgisinternal \
                AND tg.tgname IN ('us_fence_write', 'us_fence_truncate', 'us_capture') \
                AND (p.proname IN ('us_fence', 'us_refuse_truncate') OR p.proname LIKE 'us\\_capture\\_%') \
                AND (n.nspname, cl.relname) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            &[&schemas, &names],
        )
        .await
        .map_err(err)?;
    for r in &stale {
        let on: String = r.try_get(0).map_err(err)?;
        tracing::info!(table = %on, "removing understudy's triggers from a table no longer captured");
        c.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {FENCE_WRITE} ON {on}; \
             DROP TRIGGER IF EXISTS {FENCE_TRUNCATE} ON {on}; \
             DROP TRIGGER IF EXISTS {CAPTURE} ON {on}"
        ))
        .await
        .map_err(err)?;
    }
    let unused = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p \
              WHERE p.proname LIKE 'us\\_capture\\_%' \
                AND p.pronamespace = current_schema()::regnamespace \
                AND NOT EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgfoid = p.oid)",
            &[],
        )
        .await
        .map_err(err)?;
    for r in &unused {
        let f: String = r.try_get(0).map_err(err)?;
        c.batch_execute(&format!("DROP FUNCTION IF EXISTS {f}"))
            .await
            .map_err(err)?;
    }
    Ok(())
}

/// Check every captured table's capture function and triggers are what
/// the catalog asks for (a column added since `init` would otherwise be
/// left out of every image). Changes nothing.
pub(super) async fn check<C: GenericClient>(c: &C, url: &str, tables: &Tables) -> StoreResult<()> {
    for t in &tables.codecs {
        let have = present(c, url, t).await?;
        let stale = |reason: String| StoreError::Catalog {
            url: redact_url(url),
            source: CatalogError::Other {
                table: t.name.to_string(),
                reason,
            },
        };
        if have.body.as_deref() != Some(function_body(t).as_str()) {
            return Err(stale(
                "its capture trigger does not match its columns (the table changed since \
                 `understudy init`, or init never ran with it in [capture] tables): run \
                 `understudy init --config FILE` again"
                    .into(),
            ));
        }
        for (name, _, function) in triggers(t) {
            if !have
                .triggers
                .iter()
                .any(|(n, f)| n == name && *f == function)
            {
                return Err(stale(format!(
                    "trigger {name} is missing, so changes would be lost or writes not fenced: \
                     run `understudy init --config FILE` to re-create it"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_plain_or_hashed() {
        assert_eq!(function_name(&TableName::new("jobs")), "us_capture_jobs");
        let q = function_name(&TableName::new("app.Jobs"));
        assert!(q.starts_with("us_capture_app_jobs_"), "{q}");
        assert_ne!(q, function_name(&TableName::new("app.jobs")));
        assert!(function_name(&TableName::new("x".repeat(200))).len() < 63);
    }
}
