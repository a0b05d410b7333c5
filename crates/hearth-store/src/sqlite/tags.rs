//! Tags on SQLite: the `tags` table (one row per account, resource ARN and
//! key), and the per-resource limit checked inside the writing transaction.
//! Called by the [`crate::Store`] implementation in `ops`; blocking.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection};

use super::sql_err;
use crate::error::Result;
use crate::ids::AccountId;
use crate::store::TooManyTags;

/// Sets `tags` on the resource unless it would then have more than
/// `max_tags`. Run inside the write transaction: the count it reads is the
/// one the write lands on.
pub(super) fn put_limited(
    tx: &Connection,
    account_id: &AccountId,
    resource_arn: &str,
    tags: &BTreeMap<String, String>,
    max_tags: usize,
) -> Result<Result<(), TooManyTags>> {
    if tags.is_empty() {
        return Ok(Ok(()));
    }
    let existing = keys(tx, account_id, resource_arn)?;
    let added = tags.keys().filter(|k| !existing.contains(*k)).count();
    if existing.len() + added > max_tags {
        return Ok(Err(TooManyTags {
            max: max_tags,
            existing: existing.len(),
            added,
        }));
    }
    write(tx, account_id, resource_arn, tags)?;
    Ok(Ok(()))
}

/// Sets `tags` on the resource, no limit (a new image's tags, checked by the
/// caller).
pub(super) fn write(
    conn: &Connection,
    account_id: &AccountId,
    resource_arn: &str,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO tags (account_id, resource_arn, key, value) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (account_id, resource_arn, key) DO UPDATE SET value = excluded.value",
        )
        .map_err(sql_err("prepare"))?;
    for (key, value) in tags {
        stmt.execute(params![account_id.as_str(), resource_arn, key, value])
            .map_err(sql_err("put tag"))?;
    }
    Ok(())
}

/// The resource's tags.
pub(super) fn list(
    conn: &Connection,
    account_id: &AccountId,
    resource_arn: &str,
) -> Result<BTreeMap<String, String>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, value FROM tags WHERE account_id = ?1 AND resource_arn = ?2 ORDER BY key",
        )
        .map_err(sql_err("prepare"))?;
    let rows = stmt
        .query_map(params![account_id.as_str(), resource_arn], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql_err("list tags"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("list tags"))
}

/// Removes the given keys; absent keys are ignored.
pub(super) fn remove(
    tx: &Connection,
    account_id: &AccountId,
    resource_arn: &str,
    keys: &[String],
) -> Result<()> {
    let mut stmt = tx
        .prepare_cached("DELETE FROM tags WHERE account_id = ?1 AND resource_arn = ?2 AND key = ?3")
        .map_err(sql_err("prepare"))?;
    for key in keys {
        stmt.execute(params![account_id.as_str(), resource_arn, key])
            .map_err(sql_err("remove tag"))?;
    }
    Ok(())
}

fn keys(conn: &Connection, account_id: &AccountId, resource_arn: &str) -> Result<BTreeSet<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT key FROM tags WHERE account_id = ?1 AND resource_arn = ?2")
        .map_err(sql_err("prepare"))?;
    let rows = stmt
        .query_map(params![account_id.as_str(), resource_arn], |r| {
            r.get::<_, String>(0)
        })
        .map_err(sql_err("count tags"))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(sql_err("count tags"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::ids::AccountName;
    use crate::{SqliteStore, Store};

    const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:microvm-image:img-1";

    fn tags(prefix: &str, n: usize) -> BTreeMap<String, String> {
        (0..n)
            .map(|i| (format!("{prefix}{i}"), "v".into()))
            .collect()
    }

    fn setup() -> (tempfile::TempDir, SqliteStore, AccountId) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in_dir(dir.path()).unwrap();
        let a = store
            .create_account(&AccountName::new("t").unwrap(), false)
            .unwrap()
            .account_id;
        (dir, store, a)
    }

    #[test]
    fn the_limit_counts_existing_plus_new_keys_and_a_refusal_writes_nothing() {
        let (_d, s, a) = setup();
        s.put_tags(&a, ARN, &tags("k", 48), 50).unwrap().unwrap();
        // 3 overwritten, 5 new: 48 + 5 = 53.
        let mut req = tags("k", 3);
        req.extend(tags("new", 5));
        assert_eq!(
            s.put_tags(&a, ARN, &req, 50).unwrap(),
            Err(TooManyTags {
                max: 50,
                existing: 48,
                added: 5
            })
        );
        assert_eq!(s.list_tags(&a, ARN).unwrap(), tags("k", 48));
        // 48 + 2 new (overwrites count once) reaches the limit exactly.
        let mut req = tags("k", 10);
        req.extend(tags("new", 2));
        s.put_tags(&a, ARN, &req, 50).unwrap().unwrap();
        assert_eq!(s.list_tags(&a, ARN).unwrap().len(), 50);
        // At the limit: overwriting still works, one more key does not.
        let overwrite: BTreeMap<_, _> = req.keys().map(|k| (k.clone(), "w".into())).collect();
        s.put_tags(&a, ARN, &overwrite, 50).unwrap().unwrap();
        assert_eq!(s.list_tags(&a, ARN).unwrap()["new1"], "w");
        assert_eq!(
            s.put_tags(&a, ARN, &tags("more", 1), 50).unwrap(),
            Err(TooManyTags {
                max: 50,
                existing: 50,
                added: 1
            })
        );
        // Another resource (and another account's same ARN) has its own count.
        s.put_tags(&a, "arn:other", &tags("k", 50), 50)
            .unwrap()
            .unwrap();
        let b = s
            .create_account(&AccountName::new("b").unwrap(), false)
            .unwrap()
            .account_id;
        s.put_tags(&b, ARN, &tags("k", 50), 50).unwrap().unwrap();
        // Removing makes room again.
        s.remove_tags(&a, ARN, &["k0".into(), "k1".into()]).unwrap();
        s.put_tags(&a, ARN, &tags("more", 2), 50).unwrap().unwrap();
        assert_eq!(s.list_tags(&a, ARN).unwrap().len(), 50);
    }

    #[test]
    fn concurrent_writers_cannot_pass_the_limit_together() {
        // Two stores on one file (as two processes would be) and several
        // threads each: every writer adds 10 new keys to a resource that has
        // none. Whatever the interleaving, exactly 5 fit.
        let (dir, s1, a) = setup();
        let s2 = SqliteStore::open_in_dir(dir.path()).unwrap();
        let stores: [Arc<dyn Store>; 2] = [Arc::new(s1), Arc::new(s2)];
        const WRITERS: usize = 12;
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (store, barrier, a) = (stores[i % 2].clone(), barrier.clone(), a.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store
                        .put_tags(&a, ARN, &tags(&format!("w{i}-"), 10), 50)
                        .unwrap()
                })
            })
            .collect();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 5);
        for refused in outcomes.iter().filter_map(|o| o.err()) {
            assert_eq!(refused.existing, 50, "{refused:?}");
        }
        assert_eq!(stores[0].list_tags(&a, ARN).unwrap().len(), 50);
    }

    #[test]
    fn an_empty_write_is_a_no_op_even_over_the_limit() {
        let (_d, s, a) = setup();
        s.put_tags(&a, ARN, &tags("k", 3), 50).unwrap().unwrap();
        s.put_tags(&a, ARN, &BTreeMap::new(), 2).unwrap().unwrap();
        assert_eq!(s.list_tags(&a, ARN).unwrap().len(), 3);
    }
}
