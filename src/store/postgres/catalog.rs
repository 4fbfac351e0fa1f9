//! The captured tables as PostgreSQL's own catalog describes them
//! (`pg_class`, `pg_attribute`, `pg_type`, `pg_constraint`, `pg_attrdef`),
//! turned into the one table description of [`crate::tables`].
//!
//! Owns: how `[capture] tables` names resolve on PostgreSQL (`public.x` and
//! `x` are the same table, spelled `x`; other schemas stay qualified), the
//! mapping of declared types to portable ones, id generators (sequences
//! behind `serial`, identity columns and `DEFAULT nextval(...)`), and the
//! quoting of identifiers in generated SQL.
//! Must never: change anything in the database, or accept a column whose
//! values cannot be carried exactly: arrays, domains, enums, composites,
//! ranges and generated columns are refused by table and column name.

use super::conn::query_error;
use crate::config::redact_url;
use crate::store::{StoreError, StoreResult};
use crate::tables::{
    CaptureSpec, Catalog, CatalogError, ColumnDesc, ForeignKey, IdSource, PortableType, TableDesc,
    TableName,
};
use tokio_postgres::GenericClient;

/// The schema unqualified names live in.
const DEFAULT_SCHEMA: &str = "public";

/// A configured table name as every member spells it: `public.x` is `x`.
pub(crate) fn table_name(configured: &str) -> TableName {
    let s = configured.trim();
    match s.split_once('.') {
        Some((schema, table)) if schema == DEFAULT_SCHEMA => TableName::new(table),
        _ => TableName::new(s),
    }
}

/// A configured secret column (`table.column` or `schema.table.column`)
/// with its table spelled as [`table_name`] spells it.
fn secret_name(configured: &str) -> String {
    match configured.trim().split_once('.') {
        Some((schema, rest)) if schema == DEFAULT_SCHEMA && rest.contains('.') => rest.to_string(),
        _ => configured.trim().to_string(),
    }
}

/// `(schema, table)` of a table name.
pub(crate) fn schema_and_table(t: &TableName) -> (&str, &str) {
    match t.parts() {
        (Some(s), t) => (s, t),
        (None, t) => (DEFAULT_SCHEMA, t),
    }
}

/// A table name from the catalog's `(schema, relname)`.
fn from_catalog(schema: &str, table: &str) -> TableName {
    if schema == DEFAULT_SCHEMA {
        TableName::new(table)
    } else {
        TableName::new(format!("{schema}.{table}"))
    }
}

/// An identifier quoted for SQL (`"a""b"`), whatever it contains.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal for SQL (`'it''s'`).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The table, schema-qualified and quoted, for generated SQL: always
/// qualified, so a `search_path` of the agent's session cannot point a
/// statement at another table of the same name.
pub(crate) fn sql_table(t: &TableName) -> String {
    let (s, t) = schema_and_table(t);
    format!("{}.{}", quote_ident(s), quote_ident(t))
}

/// Read every table of `spec` and build the catalog (validated, parents
/// first). A table that cannot be captured is [`StoreError::Catalog`],
/// naming it and saying what to do; a failed query is the usual
/// connection or backend error.
pub(crate) async fn read_catalog<C: GenericClient>(
    c: &C,
    url: &str,
    spec: &CaptureSpec,
) -> StoreResult<Catalog> {
    let refused = |source| StoreError::Catalog {
        url: redact_url(url),
        source,
    };
    let mut tables = Vec::with_capacity(spec.tables.len());
    for configured in &spec.tables {
        let name = table_name(configured);
        tables.push(read_table(c, url, &name).await?.map_err(refused)?);
    }
    let secrets: Vec<String> = spec.secret_columns.iter().map(|s| secret_name(s)).collect();
    Catalog::build(tables, &secrets).map_err(refused)
}

/// The columns of a table with what the catalog knows about each, in
/// column order; one row with NULL column fields for a table without
/// columns, no row for a missing table.
const COLUMNS_SQL: &str = "\
SELECT c.oid, c.relkind::text, a.attnum, a.attname::text, t.typname::text, t.typtype::text,
       t.typcategory::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attgenerated::text,
       coalesce(pg_get_serial_sequence(format('%I.%I', n.nspname, c.relname), a.attname),
                (SELECT format('%I.%I', sn.nspname, s.relname)
                   FROM pg_depend dep
                   JOIN pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
                   JOIN pg_namespace sn ON sn.oid = s.relnamespace
                  WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
                    AND dep.refclassid = 'pg_class'::regclass
                    AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'
                  ORDER BY 1 LIMIT 1))
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
 WHERE n.nspname = $1 AND c.relname = $2
 ORDER BY a.attnum";

/// The primary key and the foreign keys of a table: kind, own columns
/// (attnums, in key order), ON DELETE action, and the referenced table and
/// its columns by name.
const CONSTRAINTS_SQL: &str = "\
SELECT con.contype::text, con.conkey, con.confdeltype::text, pn.nspname::text, pc.relname::text,
       ARRAY(SELECT pa.attname::text
               FROM unnest(con.confkey) WITH ORDINALITY AS k(num, ord)
               JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.num
              ORDER BY k.ord)
  FROM pg_constraint con
  LEFT JOIN pg_class pc ON pc.oid = con.confrelid
  LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
 WHERE con.conrelid = $1 AND con.contype IN ('p', 'f')
 ORDER BY con.contype DESC, con.conname";

/// One table's description, or why it cannot be captured.
async fn read_table<C: GenericClient>(
    c: &C,
    url: &str,
    name: &TableName,
) -> StoreResult<Result<TableDesc, CatalogError>> {
    let (schema, table) = schema_and_table(name);
    let rows = c
        .query(COLUMNS_SQL, &[&schema, &table])
        .await
        .map_err(|e| query_error(url, &e))?;
    let bad = |e: tokio_postgres::Error| StoreError::Corrupt(format!("pg_catalog of {name}: {e}"));
    let Some(first) = rows.first() else {
        return Ok(Err(CatalogError::Missing {
            table: name.to_string(),
        }));
    };
    let oid: u32 = first.try_get(0).map_err(bad)?;
    let relkind: String = first.try_get(1).map_err(bad)?;
    if relkind != "r" && relkind != "p" {
        return Ok(Err(CatalogError::Other {
            table: name.to_string(),
            reason: format!(
                "it is not a table (pg_class.relkind {relkind}: a view, sequence or foreign table); \
                 capture the table behind it instead"
            ),
        }));
    }
    let mut columns = Vec::with_capacity(rows.len());
    let mut attnums = Vec::with_capacity(rows.len());
    for r in &rows {
        let Some(attnum) = r.try_get::<_, Option<i16>>(2).map_err(bad)? else {
            continue; // a table without columns
        };
        match column(name, r).map_err(bad)? {
            Ok(col) => columns.push(col),
            Err(refusal) => return Ok(Err(refusal)),
        }
        attnums.push(attnum);
    }
    let cons = c
        .query(CONSTRAINTS_SQL, &[&oid])
        .await
        .map_err(|e| query_error(url, &e))?;
    let mut key = Vec::new();
    let mut foreign_keys = Vec::new();
    for r in &cons {
        let kind: String = r.try_get(0).map_err(bad)?;
        let conkey: Vec<i16> = r.try_get(1).map_err(bad)?;
        let own = conkey
            .iter()
            .map(|n| attnums.iter().position(|a| a == n))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                StoreError::Corrupt(format!("a constraint of {name} names an unknown column"))
            })?;
        if kind == "p" {
            key = own;
            continue;
        }
        let deltype: String = r.try_get(2).map_err(bad)?;
        let pschema: String = r.try_get(3).map_err(bad)?;
        let ptable: String = r.try_get(4).map_err(bad)?;
        foreign_keys.push(ForeignKey {
            columns: own,
            parent: from_catalog(&pschema, &ptable),
            parent_columns: r.try_get(5).map_err(bad)?,
            cascade: deltype == "c",
        });
    }
    Ok(Ok(TableDesc {
        name: name.clone(),
        columns,
        key,
        foreign_keys,
    }))
}

/// One column from a row of [`COLUMNS_SQL`], or the refusal of its type.
fn column(
    table: &TableName,
    r: &tokio_postgres::Row,
) -> Result<Result<ColumnDesc, CatalogError>, tokio_postgres::Error> {
    let name: String = r.try_get(3)?;
    let typname: String = r.try_get(4)?;
    let typtype: String = r.try_get(5)?;
    let typcategory: String = r.try_get(6)?;
    let declared: String = r.try_get(7)?;
    let notnull: bool = r.try_get(8)?;
    let generated: String = r.try_get(9)?;
    let sequence: Option<String> = r.try_get(10)?;
    if generated == "s" {
        return Ok(Err(CatalogError::Generated {
            table: table.to_string(),
            column: name,
        }));
    }
    // Only base types map: a domain, enum, composite, range or array
    // could be named like one (`typname` is the domain's own name).
    let ty = if typtype == "b" && typcategory != "A" {
        PortableType::from_postgres(&typname)
    } else {
        None
    };
    let Some(ty) = ty else {
        return Ok(Err(CatalogError::UnsupportedType {
            table: table.to_string(),
            column: name,
            declared,
        }));
    };
    Ok(Ok(ColumnDesc {
        name,
        ty,
        declared,
        nullable: !notnull,
        secret: false,
        ids: sequence.map(IdSource::Sequence),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names_are_spelled_bare() {
        assert_eq!(table_name("public.jobs"), TableName::new("jobs"));
        assert_eq!(table_name("jobs"), TableName::new("jobs"));
        assert_eq!(table_name("app.jobs"), TableName::new("app.jobs"));
        assert_eq!(secret_name("public.keys.content"), "keys.content");
        assert_eq!(secret_name("keys.content"), "keys.content");
        assert_eq!(secret_name("app.keys.content"), "app.keys.content");
        assert_eq!(
            schema_and_table(&TableName::new("jobs")),
            ("public", "jobs")
        );
        assert_eq!(sql_table(&TableName::new("app.x\"y")), "\"app\".\"x\"\"y\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
