//! The captured tables as SQLite's own catalog describes them: columns and
//! declared types, primary key, rowid alias, foreign keys, read into the
//! one table description ([`TableDesc`]) and validated into a [`Catalog`].
//!
//! Owns: the reading of `pragma_table_list`, `pragma_table_xinfo`,
//! `pragma_index_list`, `pragma_foreign_key_list` and `sqlite_master`, and
//! the SQLite-only refusals (views, virtual tables, generated and hidden
//! columns, nullable key columns, undeclared or unportable types).
//! Must never: change the schema, read an application row, or accept a
//! table it cannot capture exactly (every refusal names table and column).
//!
//! Names are SQLite's own spelling (from its catalog), not the config's:
//! SQLite matches names case-insensitively, so `[capture] tables = ["Jobs"]`
//! finds `jobs`, and every member then describes the table as `jobs`
//! whatever its config says, so their fingerprints agree.

use crate::tables::{
    CaptureSpec, Catalog, CatalogError, ColumnDesc, ForeignKey, IdSource, PortableType, TableDesc,
    TableName,
};
use rusqlite::{Connection, OptionalExtension};

/// Read every table `spec` names and build the catalog (validation across
/// tables, parents-first order, secret columns: [`Catalog::build`]).
pub(super) fn read_catalog(conn: &Connection, spec: &CaptureSpec) -> Result<Catalog, CatalogError> {
    let mut tables = Vec::with_capacity(spec.tables.len());
    for name in &spec.tables {
        tables.push(read_table(conn, name)?);
    }
    let secrets: Vec<String> = spec
        .secret_columns
        .iter()
        .map(|s| secret_in_sqlite_spelling(s, &tables))
        .collect();
    Catalog::build(tables, &secrets)
}

/// A catalog query failed: SQLite's message names objects, never values.
fn sql_err(table: &str, e: rusqlite::Error) -> CatalogError {
    CatalogError::Other {
        table: table.to_string(),
        reason: format!("reading SQLite's catalog failed: {e}"),
    }
}

fn other(table: &str, reason: impl Into<String>) -> CatalogError {
    CatalogError::Other {
        table: table.to_string(),
        reason: reason.into(),
    }
}

/// A table in the `main` schema, as `pragma_table_list` lists it.
struct Listed {
    /// SQLite's spelling.
    name: String,
    /// `table`, `view`, `virtual` or `shadow`.
    kind: String,
    without_rowid: bool,
}

/// The object named `name` (case-insensitively, as SQLite resolves names).
fn listed(conn: &Connection, name: &str) -> rusqlite::Result<Option<Listed>> {
    conn.query_row(
        "SELECT name, type, wr FROM pragma_table_list
         WHERE schema = 'main' AND name = ?1 COLLATE NOCASE",
        [name],
        |r| {
            Ok(Listed {
                name: r.get(0)?,
                kind: r.get(1)?,
                without_rowid: r.get::<_, i64>(2)? != 0,
            })
        },
    )
    .optional()
}

/// One table: found, refused, or described.
fn read_table(conn: &Connection, config_name: &str) -> Result<TableDesc, CatalogError> {
    let found = listed(conn, config_name)
        .map_err(|e| sql_err(config_name, e))?
        .ok_or_else(|| CatalogError::Missing {
            table: config_name.to_string(),
        })?;
    let name = found.name.as_str();
    match found.kind.as_str() {
        "table" => {}
        "view" => {
            return Err(other(
                name,
                "is a view, not a table: capture the tables it reads from instead",
            ));
        }
        "virtual" | "shadow" => {
            return Err(other(
                name,
                "is a virtual table (or part of one): its contents belong to a module, not to rows understudy can replicate; capture ordinary tables only",
            ));
        }
        _ => return Err(other(name, "is not an ordinary table")),
    }
    // SQLite reserves the prefix for its own tables (sqlite_sequence, ...).
    if name
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"))
    {
        return Err(other(
            name,
            "is one of SQLite's own tables: remove it from [capture] tables",
        ));
    }
    let raw = raw_columns(conn, name).map_err(|e| sql_err(name, e))?;
    let key = key_of(name, &raw)?;
    let alias = rowid_alias(conn, &found, &raw, &key)?;
    let columns = describe_columns(name, &raw, &key, &found, alias)?;
    let foreign_keys = foreign_keys(conn, name, &columns)?;
    Ok(TableDesc {
        name: TableName::new(name),
        columns,
        key,
        foreign_keys,
    })
}

/// A row of `pragma_table_xinfo`.
struct RawColumn {
    name: String,
    /// The declared type as written (`VARCHAR(64)`), empty when none.
    decl: String,
    notnull: bool,
    /// Position in the primary key, from 1; 0 when not in it.
    pk: i64,
    /// 0 ordinary, 1 hidden (virtual tables), 2 virtual generated, 3 stored
    /// generated.
    hidden: i64,
}

fn raw_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<RawColumn>> {
    let mut st = conn.prepare(
        "SELECT name, type, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
    )?;
    let rows = st.query_map([table], |r| {
        Ok(RawColumn {
            name: r.get(0)?,
            decl: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            notnull: r.get::<_, i64>(2)? != 0,
            pk: r.get(3)?,
            hidden: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Indexes of the primary key's columns, in key order.
fn key_of(table: &str, raw: &[RawColumn]) -> Result<Vec<usize>, CatalogError> {
    let mut key: Vec<(i64, usize)> = raw
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pk > 0)
        .map(|(i, c)| (c.pk, i))
        .collect();
    if key.is_empty() {
        return Err(CatalogError::NoPrimaryKey {
            table: table.to_string(),
        });
    }
    key.sort_unstable();
    Ok(key.into_iter().map(|(_, i)| i).collect())
}

/// The column that is the rowid (`INTEGER PRIMARY KEY` of a rowid table),
/// with whether it is `AUTOINCREMENT`. A rowid table's other primary keys
/// get an automatic index (origin `pk`); the rowid alias does not, which
/// also rules out SQLite's quirk `INTEGER PRIMARY KEY DESC` (not an alias).
fn rowid_alias(
    conn: &Connection,
    found: &Listed,
    raw: &[RawColumn],
    key: &[usize],
) -> Result<Option<(usize, bool)>, CatalogError> {
    let [col] = key else { return Ok(None) };
    if found.without_rowid || !raw[*col].decl.eq_ignore_ascii_case("INTEGER") {
        return Ok(None);
    }
    let name = found.name.as_str();
    let pk_index: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM pragma_index_list(?1, 'main') WHERE origin = 'pk'",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_err(name, e))?;
    if pk_index.is_some() {
        return Ok(None);
    }
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sql_err(name, e))?
        .flatten();
    Ok(Some((
        *col,
        has_keyword(sql.as_deref().unwrap_or(""), "AUTOINCREMENT"),
    )))
}

/// Whether `sql` has `word` as a keyword: outside quotes, identifiers in
/// brackets or backticks, and comments (a column named "autoincrement_at"
/// or a comment mentioning the word does not count).
fn has_keyword(sql: &str, word: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        let close: Option<&[u8]> = match b[i] {
            b'\'' => Some(b"'"),
            b'"' => Some(b"\""),
            b'`' => Some(b"`"),
            b'[' => Some(b"]"),
            b'-' if rest.starts_with(b"--") => Some(b"\n"),
            b'/' if rest.starts_with(b"/*") => Some(b"*/"),
            _ => None,
        };
        if let Some(close) = close {
            // Skip to the end of the quoted part or comment ('' and ""
            // escapes just restart a quoted part: same result).
            let from = i + 1;
            i = find(&b[from..], close).map_or(b.len(), |at| from + at + close.len());
            continue;
        }
        if b[i].is_ascii_alphanumeric() || b[i] == b'_' {
            let end = i + rest
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b'$')
                .count();
            if b[i..end].eq_ignore_ascii_case(word.as_bytes()) {
                return true;
            }
            i = end;
            continue;
        }
        i += 1;
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Columns in table order with portable types; refuses generated and hidden
/// columns, unportable types and key columns that may be NULL.
fn describe_columns(
    table: &str,
    raw: &[RawColumn],
    key: &[usize],
    found: &Listed,
    alias: Option<(usize, bool)>,
) -> Result<Vec<ColumnDesc>, CatalogError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, c) in raw.iter().enumerate() {
        let column = || c.name.clone();
        match c.hidden {
            0 => {}
            2 | 3 => {
                return Err(CatalogError::Generated {
                    table: table.into(),
                    column: column(),
                });
            }
            _ => {
                return Err(other(
                    table,
                    format!(
                        "column {} is hidden (a virtual table's column): capture ordinary tables only",
                        c.name
                    ),
                ));
            }
        }
        let ty = PortableType::from_sqlite_decl(&c.decl).ok_or_else(|| {
            CatalogError::UnsupportedType {
                table: table.into(),
                column: column(),
                declared: if c.decl.is_empty() {
                    "(none declared)".into()
                } else {
                    c.decl.clone()
                },
            }
        })?;
        let is_alias = alias.is_some_and(|(a, _)| a == i);
        // The rowid cannot be NULL (SQLite assigns one), and WITHOUT ROWID
        // tables enforce NOT NULL on their key whatever the declaration says.
        let never_null = c.notnull || is_alias || (found.without_rowid && key.contains(&i));
        if key.contains(&i) && !never_null {
            return Err(CatalogError::NullableKey {
                table: table.into(),
                column: column(),
            });
        }
        out.push(ColumnDesc {
            name: c.name.clone(),
            ty,
            declared: c.decl.clone(),
            nullable: !never_null,
            secret: false,
            ids: alias
                .filter(|_| is_alias)
                .map(|(_, autoincrement)| IdSource::Rowid { autoincrement }),
        });
    }
    Ok(out)
}

/// A row of `pragma_foreign_key_list`.
struct RawForeignKey {
    id: i64,
    parent: String,
    from: String,
    /// `None`: the parent's primary key (`REFERENCES parent` without columns).
    to: Option<String>,
    on_delete: String,
}

fn foreign_keys(
    conn: &Connection,
    table: &str,
    columns: &[ColumnDesc],
) -> Result<Vec<ForeignKey>, CatalogError> {
    let raw = raw_foreign_keys(conn, table).map_err(|e| sql_err(table, e))?;
    let mut out = Vec::new();
    // Rows come ordered by (id, seq): one run of rows per foreign key.
    for group in raw.chunk_by(|a, b| a.id == b.id) {
        out.push(foreign_key(conn, table, columns, group)?);
    }
    Ok(out)
}

fn raw_foreign_keys(conn: &Connection, table: &str) -> rusqlite::Result<Vec<RawForeignKey>> {
    let mut st = conn.prepare(
        "SELECT id, \"table\", \"from\", \"to\", on_delete
         FROM pragma_foreign_key_list(?1, 'main') ORDER BY id, seq",
    )?;
    let rows = st.query_map([table], |r| {
        Ok(RawForeignKey {
            id: r.get(0)?,
            parent: r.get(1)?,
            from: r.get(2)?,
            to: r.get(3)?,
            on_delete: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// One foreign key, with the parent's table and column names in SQLite's
/// spelling when the parent exists (as written otherwise: a parent that
/// does not exist is not captured, and [`Catalog::build`] refuses it).
fn foreign_key(
    conn: &Connection,
    table: &str,
    columns: &[ColumnDesc],
    group: &[RawForeignKey],
) -> Result<ForeignKey, CatalogError> {
    let first = &group[0];
    let mut child = Vec::with_capacity(group.len());
    for fk in group {
        let at = columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(&fk.from))
            .ok_or_else(|| {
                other(
                    table,
                    format!(
                        "a foreign key names column {}, which the table does not have",
                        fk.from
                    ),
                )
            })?;
        child.push(at);
    }
    let parent = listed(conn, &first.parent).map_err(|e| sql_err(table, e))?;
    let (parent_name, parent_columns) = match parent {
        Some(p) => {
            let raw = raw_columns(conn, &p.name).map_err(|e| sql_err(&p.name, e))?;
            (p.name, parent_columns(group, &raw))
        }
        None => {
            let written = group.iter().filter_map(|fk| fk.to.clone()).collect();
            (first.parent.clone(), written)
        }
    };
    Ok(ForeignKey {
        columns: child,
        parent: TableName::new(parent_name),
        parent_columns,
        cascade: first.on_delete.eq_ignore_ascii_case("CASCADE"),
    })
}

/// The referenced columns in the parent's spelling; the parent's primary
/// key where the foreign key names none.
fn parent_columns(group: &[RawForeignKey], parent: &[RawColumn]) -> Vec<String> {
    if group.iter().any(|fk| fk.to.is_none()) {
        let mut key: Vec<&RawColumn> = parent.iter().filter(|c| c.pk > 0).collect();
        key.sort_by_key(|c| c.pk);
        return key.into_iter().map(|c| c.name.clone()).collect();
    }
    group
        .iter()
        .filter_map(|fk| fk.to.as_deref())
        .map(|to| {
            parent
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(to))
                .map_or_else(|| to.to_string(), |c| c.name.clone())
        })
        .collect()
}

/// `table.column` with both names in SQLite's spelling when they name a
/// captured column case-insensitively (as SQLite would resolve them);
/// unchanged otherwise, for [`Catalog::build`] to refuse by name.
fn secret_in_sqlite_spelling(spec: &str, tables: &[TableDesc]) -> String {
    let Some((t, c)) = spec.rsplit_once('.') else {
        return spec.to_string();
    };
    let table = tables
        .iter()
        .find(|d| d.name.as_str().eq_ignore_ascii_case(t));
    let column = table.and_then(|d| {
        d.columns
            .iter()
            .find(|col| col.name.eq_ignore_ascii_case(c))
    });
    match (table, column) {
        (Some(d), Some(col)) => format!("{}.{}", d.name, col.name),
        _ => spec.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch(sql).expect("schema");
        conn
    }

    fn spec(tables: &[&str], secret: &[&str]) -> CaptureSpec {
        CaptureSpec {
            tables: tables.iter().map(|s| s.to_string()).collect(),
            secret_columns: secret.iter().map(|s| s.to_string()).collect(),
            example: false,
        }
    }

    fn names(t: &TableDesc, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| t.columns[i].name.clone()).collect()
    }

    const SCHEDULER: &str = "
        CREATE TABLE project (
            id   INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE
        );
        CREATE TABLE job (
            project_id INTEGER NOT NULL REFERENCES project ON DELETE CASCADE,
            job_name   VARCHAR(100) NOT NULL,
            enabled    BOOLEAN NOT NULL DEFAULT 1,
            cost       NUMERIC(10,2),
            next_run   TIMESTAMP,
            PRIMARY KEY (job_name, project_id)
        );
        -- WITHOUT ROWID: the key is NOT NULL though not declared so.
        CREATE TABLE step (
            project_id INTEGER,
            job_name   VARCHAR(100),
            step_no    INTEGER,
            payload    BLOB,
            created    TIMESTAMP WITH TIME ZONE,
            PRIMARY KEY (project_id, job_name, step_no),
            FOREIGN KEY (project_id, job_name) REFERENCES job (project_id, job_name)
                ON DELETE CASCADE
        ) WITHOUT ROWID;
    ";

    #[test]
    fn a_scheduler_like_schema_is_described() {
        let conn = db(SCHEDULER);
        let cat = read_catalog(&conn, &spec(&["step", "job", "project"], &["step.payload"]))
            .expect("capturable");
        let order: Vec<&str> = cat.tables().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["project", "job", "step"]);

        let project = cat.by_name("project").unwrap();
        assert_eq!(project.key, [0]);
        assert_eq!(
            project.columns[0].ids,
            Some(IdSource::Rowid {
                autoincrement: true
            })
        );
        assert!(!project.columns[0].nullable);
        assert_eq!(project.columns[1].ty, PortableType::Text);

        let job = cat.by_name("job").unwrap();
        assert_eq!(names(job, &job.key), ["job_name", "project_id"]);
        let ty = |t: &TableDesc, c: &str| {
            t.column(c)
                .map(|(_, c)| (c.ty, c.declared.clone(), c.nullable))
        };
        assert_eq!(
            ty(job, "enabled"),
            Some((PortableType::Bool, "BOOLEAN".into(), false))
        );
        assert_eq!(
            ty(job, "cost"),
            Some((PortableType::Numeric, "NUMERIC(10,2)".into(), true))
        );
        assert_eq!(
            ty(job, "next_run"),
            Some((PortableType::Timestamp, "TIMESTAMP".into(), true))
        );
        assert_eq!(
            job.columns[0].ids, None,
            "an INTEGER column in a composite key is no rowid"
        );
        assert_eq!(
            job.foreign_keys,
            [ForeignKey {
                columns: vec![0],
                parent: TableName::new("project"),
                parent_columns: vec!["id".into()],
                cascade: true,
            }]
        );

        let step = cat.by_name("step").unwrap();
        assert_eq!(
            names(step, &step.key),
            ["project_id", "job_name", "step_no"]
        );
        assert!(step.key.iter().all(|&i| !step.columns[i].nullable));
        assert!(step.columns.iter().all(|c| c.ids.is_none()));
        let (_, payload) = step.column("payload").unwrap();
        assert!(payload.secret && payload.ty == PortableType::Bytes);
        assert_eq!(ty(step, "created").unwrap().0, PortableType::TimestampTz);
        assert_eq!(
            step.foreign_keys,
            [ForeignKey {
                columns: vec![0, 1],
                parent: TableName::new("job"),
                parent_columns: vec!["project_id".into(), "job_name".into()],
                cascade: true,
            }]
        );
        assert_eq!(cat.cascade_children(&TableName::new("job")).len(), 1);
    }

    #[test]
    fn the_example_schema_is_described() {
        // The agent's own tables next to the example's, as `init` leaves them.
        let conn = db(include_str!("../../../schemas/sqlite/0001_core.sql"));
        conn.execute_batch(include_str!("../../../schemas/sqlite/example.sql"))
            .expect("example schema");
        let cat = read_catalog(&conn, &CaptureSpec::example()).expect("capturable");
        let order: Vec<&str> = cat.tables().iter().map(|t| t.name.as_str()).collect();
        // Parents first, ties by name.
        assert_eq!(order, ["keys", "projects", "jobs"]);
        let jobs = cat.by_name("jobs").unwrap();
        assert_eq!(names(jobs, &jobs.key), ["id"]);
        // Declared BOOLEAN so it maps like PostgreSQL's example schema.
        assert_eq!(
            jobs.column("schedule_enabled").unwrap().1.ty,
            PortableType::Bool
        );
        assert_eq!(jobs.column("updated_at").unwrap().1.ty, PortableType::Int);
        assert_eq!(jobs.foreign_keys.len(), 1);
        let fk = &jobs.foreign_keys[0];
        assert_eq!(
            (fk.parent.as_str(), fk.parent_columns.as_slice(), fk.cascade),
            ("projects", &["name".to_string()][..], true)
        );
        assert_eq!(names(jobs, &fk.columns), ["project"]);
        let keys = cat.by_name("keys").unwrap();
        let (_, content) = keys.column("content").unwrap();
        assert!(content.secret && content.ty == PortableType::Bytes && !content.nullable);
        let projects = cat.by_name("projects").unwrap();
        assert!(!projects.columns[0].nullable && projects.columns[0].ids.is_none());
    }

    #[test]
    fn names_take_sqlites_spelling() {
        let conn = db("
            CREATE TABLE Project (ID INTEGER PRIMARY KEY, Secret TEXT);
            CREATE TABLE task (id INTEGER PRIMARY KEY, p INTEGER REFERENCES PROJECT(id));
        ");
        let cat = read_catalog(&conn, &spec(&["TASK", "project"], &["PROJECT.secret"])).unwrap();
        let order: Vec<&str> = cat.tables().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["Project", "task"]);
        let fk = &cat.by_name("task").unwrap().foreign_keys[0];
        assert_eq!(
            (fk.parent.as_str(), fk.parent_columns.as_slice()),
            ("Project", &["ID".to_string()][..])
        );
        assert!(!fk.cascade);
        assert!(cat.by_name("Project").unwrap().columns[1].secret);
        assert_eq!(
            cat.by_name("Project").unwrap().columns[0].ids,
            Some(IdSource::Rowid {
                autoincrement: false
            })
        );
    }

    #[test]
    fn only_a_true_rowid_alias_takes_rowid_ids() {
        let conn = db("
            CREATE TABLE a (id INTEGER PRIMARY KEY DESC, v TEXT);
            CREATE TABLE b (id INT PRIMARY KEY NOT NULL, v TEXT);
            CREATE TABLE c (id INTEGER NOT NULL, v TEXT, PRIMARY KEY (id)) WITHOUT ROWID;
            CREATE TABLE d (id integer primary key, v TEXT /* AUTOINCREMENT */, \"autoincrement\" TEXT);
        ");
        let cat = read_catalog(&conn, &spec(&["b", "c", "d"], &[])).unwrap();
        for t in ["b", "c"] {
            assert_eq!(cat.by_name(t).unwrap().columns[0].ids, None, "{t}");
        }
        assert_eq!(
            cat.by_name("d").unwrap().columns[0].ids,
            Some(IdSource::Rowid {
                autoincrement: false
            })
        );
        // INTEGER PRIMARY KEY DESC is not an alias, so its key may be NULL.
        let e = read_catalog(&conn, &spec(&["a"], &[])).unwrap_err();
        assert!(matches!(e, CatalogError::NullableKey { .. }), "{e}");
        assert!(has_keyword(
            "id INTEGER PRIMARY KEY autoincrement)",
            "AUTOINCREMENT"
        ));
        assert!(!has_keyword(
            "'AUTOINCREMENT' -- AUTOINCREMENT\n [autoincrement] x_autoincrement",
            "AUTOINCREMENT"
        ));
    }

    /// The refusal for `sql` captured as `tables`, with its message.
    fn refusal(sql: &str, tables: &[&str]) -> (CatalogError, String) {
        let conn = db(sql);
        let e = read_catalog(&conn, &spec(tables, &[])).expect_err("refused");
        let msg = e.to_string();
        (e, msg)
    }

    #[test]
    fn refusals_name_the_table_and_column() {
        let (e, m) = refusal("CREATE TABLE t (a TEXT, b TEXT)", &["t"]);
        assert!(
            matches!(e, CatalogError::NoPrimaryKey { .. }) && m.contains("t has no primary key"),
            "{m}"
        );

        let (e, m) = refusal(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, shape GEOMETRY)",
            &["t"],
        );
        assert!(
            matches!(e, CatalogError::UnsupportedType { .. })
                && m.contains("t.shape has type GEOMETRY"),
            "{m}"
        );
        let (_, m) = refusal("CREATE TABLE t (id INTEGER PRIMARY KEY, anything)", &["t"]);
        assert!(m.contains("t.anything has type (none declared)"), "{m}");

        for kind in ["VIRTUAL", "STORED"] {
            let sql = format!(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a INT, twice INT GENERATED ALWAYS AS (a * 2) {kind})"
            );
            let (e, m) = refusal(&sql, &["t"]);
            assert!(
                matches!(e, CatalogError::Generated { .. })
                    && m.contains("t.twice is a generated column"),
                "{m}"
            );
        }

        let (e, m) = refusal(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id));",
            &["child"],
        );
        assert!(matches!(e, CatalogError::ForeignKeyOutside { .. }), "{m}");
        assert!(
            m.contains("child(parent_id) references parent, which is not captured"),
            "{m}"
        );

        let (e, m) = refusal("CREATE TABLE t (path TEXT PRIMARY KEY, v TEXT)", &["t"]);
        assert!(
            matches!(e, CatalogError::NullableKey { .. })
                && m.contains("t.path is part of the primary key but may be NULL"),
            "{m}"
        );

        let (e, m) = refusal("CREATE TABLE t (id INTEGER PRIMARY KEY)", &["t", "nope"]);
        assert!(
            matches!(e, CatalogError::Missing { .. })
                && m.contains("captured table nope does not exist"),
            "{m}"
        );
    }

    #[test]
    fn views_and_virtual_tables_are_not_tables() {
        let sql = "CREATE TABLE t (id INTEGER PRIMARY KEY); CREATE VIEW v AS SELECT id FROM t;
                   CREATE VIRTUAL TABLE docs USING fts5(body);";
        let (e, m) = refusal(sql, &["v"]);
        assert!(
            matches!(e, CatalogError::Other { .. }) && m.starts_with("v: is a view"),
            "{m}"
        );
        let (_, m) = refusal(sql, &["docs"]);
        assert!(m.starts_with("docs: is a virtual table"), "{m}");
        let (_, m) = refusal(sql, &["docs_data"]);
        assert!(m.starts_with("docs_data: is a virtual table"), "{m}");
        let (_, m) = refusal(
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT); INSERT INTO t DEFAULT VALUES;",
            &["sqlite_sequence"],
        );
        assert!(m.contains("SQLite's own tables"), "{m}");
    }
}
