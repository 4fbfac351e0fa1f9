//! Backend-independent table checksums.
//!
//! Owns: the canonical encoding of a row for hashing, and the order-free
//! accumulation (a sum of per-row digests), so SQLite and PostgreSQL agree
//! whatever their collation or scan order.
//! Must never: expose row content (only digests leave this module).

use crate::model::RowImage;
use sha2::{Digest, Sha256};

/// Accumulates one table's checksum. Order-independent: rows may be fed in
/// any order (no `ORDER BY` over a million rows, no collation differences).
#[derive(Default, Clone, Debug)]
pub struct TableHasher {
    rows: u64,
    sum: u128,
}

impl TableHasher {
    pub fn add(&mut self, row: &RowImage) {
        let mut h = Sha256::new();
        encode(row, &mut h);
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.rows += 1;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Hex digest: row count and the digest sum.
    pub fn digest(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

fn field(h: &mut Sha256, v: Option<&[u8]>) {
    match v {
        None => h.update([0u8]),
        Some(b) => {
            h.update([1u8]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
    }
}

fn s(v: &str) -> Option<&[u8]> {
    Some(v.as_bytes())
}

fn os(v: &Option<String>) -> Option<&[u8]> {
    v.as_deref().map(str::as_bytes)
}

fn encode(row: &RowImage, h: &mut Sha256) {
    match row {
        RowImage::Project(p) => {
            h.update(b"P");
            field(h, s(&p.name));
            field(h, os(&p.description));
            field(h, os(&p.config));
            field(h, Some(&p.updated_at.to_le_bytes()));
        }
        RowImage::Job(j) => {
            h.update(b"J");
            field(h, s(&j.id));
            field(h, s(&j.project));
            field(h, s(&j.name));
            field(h, os(&j.group_path));
            field(h, os(&j.description));
            field(h, os(&j.definition));
            field(h, os(&j.schedule));
            field(h, Some(&[j.schedule_enabled as u8]));
            field(h, Some(&[j.execution_enabled as u8]));
            field(h, os(&j.owner_member));
            field(h, Some(&j.updated_at.to_le_bytes()));
        }
        RowImage::Key(k) => {
            h.update(b"K");
            field(h, s(&k.path));
            field(h, s(&k.kind));
            field(h, Some(k.content.expose()));
            field(h, os(&k.meta));
            field(h, Some(&k.updated_at.to_le_bytes()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProjectRow;

    fn p(name: &str, d: Option<&str>) -> RowImage {
        RowImage::Project(ProjectRow {
            name: name.into(),
            description: d.map(Into::into),
            config: None,
            updated_at: 1,
        })
    }

    #[test]
    fn order_free_and_content_sensitive() {
        let mut a = TableHasher::default();
        a.add(&p("x", None));
        a.add(&p("y", Some("d")));
        let mut b = TableHasher::default();
        b.add(&p("y", Some("d")));
        b.add(&p("x", None));
        assert_eq!(a.digest(), b.digest());
        let mut c = TableHasher::default();
        c.add(&p("y", Some("e")));
        c.add(&p("x", None));
        assert_ne!(a.digest(), c.digest());
        // NULL and empty differ.
        let mut n = TableHasher::default();
        n.add(&p("x", None));
        let mut e = TableHasher::default();
        e.add(&p("x", Some("")));
        assert_ne!(n.digest(), e.digest());
    }
}
