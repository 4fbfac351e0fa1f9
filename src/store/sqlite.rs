//! SQLite backend (scaffold, being written).
use super::*;
use crate::model::{Change, Epoch, MemberId, Position, Role};
use std::time::Duration;

fn todo_backend() -> StoreError {
    StoreError::Backend("SCAFFOLD: backend not written yet".into())
}

pub struct SqliteStore;
impl SqliteStore {
    pub async fn open(_p: &std::path::Path) -> StoreResult<SqliteStore> {
        Err(todo_backend())
    }
}
impl MemberStore for SqliteStore {
    async fn init(&self, _p: &InitParams) -> StoreResult<InitReport> {
        Err(todo_backend())
    }
    async fn check_schema(&self) -> StoreResult<()> {
        Err(todo_backend())
    }
    async fn state(&self) -> StoreResult<ReplicationState> {
        Err(todo_backend())
    }
    async fn sequence(&self) -> StoreResult<u64> {
        Err(todo_backend())
    }
    async fn read_changes(&self, _a: u64, _n: usize, _b: usize) -> StoreResult<ChangeRead> {
        Err(todo_backend())
    }
    async fn apply(&self, _c: &[Change], _commit: bool) -> StoreResult<Position> {
        Err(todo_backend())
    }
    async fn abort_apply(&self) -> StoreResult<()> {
        Err(todo_backend())
    }
    async fn set_role(&self, _r: Role, _e: Epoch, _a: Option<&MemberId>) -> StoreResult<()> {
        Err(todo_backend())
    }
    async fn renew_lease(&self, _l: Duration) -> StoreResult<i64> {
        Err(todo_backend())
    }
    async fn db_now_ms(&self) -> StoreResult<i64> {
        Err(todo_backend())
    }
    async fn record_vote(&self, _v: &Vote) -> StoreResult<()> {
        Err(todo_backend())
    }
    async fn set_paused(&self, _p: bool) -> StoreResult<()> {
        Err(todo_backend())
    }
    async fn record_epoch(&self, _r: &EpochRecord) -> StoreResult<()> {
        Err(todo_backend())
    }
    async fn epoch_history(&self) -> StoreResult<Vec<EpochRecord>> {
        Err(todo_backend())
    }
    async fn checksums(&self) -> StoreResult<Vec<TableChecksum>> {
        Err(todo_backend())
    }
    async fn wait_for_commit(&self, _t: Duration) -> StoreResult<bool> {
        Err(todo_backend())
    }
    async fn trim_log(&self, _upto: u64) -> StoreResult<u64> {
        Err(todo_backend())
    }
    async fn oldest_seq(&self) -> StoreResult<Option<u64>> {
        Err(todo_backend())
    }
}
