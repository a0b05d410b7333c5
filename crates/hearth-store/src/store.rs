//! The [`Store`] trait: every persistent operation of the control plane,
//! independent of the database behind it.
//!
//! All methods are **blocking** (they do disk I/O and may wait on locks);
//! async callers run them on `tokio::task::spawn_blocking`.
//!
//! Isolation rule: every method that reads, lists, updates or deletes
//! account-owned rows takes the caller's [`AccountId`] and only ever touches
//! rows of that account; a row of another account is reported exactly like a
//! missing one ([`StoreError::NotFound`]). The only exceptions are the
//! explicitly named `*_all_accounts` methods, [`Store::secret_for`] and
//! [`Store::purge_idempotency`], meant for the server's own machinery
//! (authentication, reconciler, housekeeping), never for answering a
//! caller's request directly.
//!
//! [`StoreError::NotFound`]: crate::StoreError::NotFound

use std::collections::BTreeMap;

use crate::error::Result;
use crate::ids::{AccountId, AccountName, SecretAccessKey};
use crate::model::*;

/// [`Store::put_tags`] refused: the resource would have had more than `max`
/// tags. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a resource can have at most {max} tags; it has {existing} and the write adds {added}")]
pub struct TooManyTags {
    /// The limit the caller passed.
    pub max: usize,
    /// Tags the resource has.
    pub existing: usize,
    /// Keys of the write the resource does not have yet.
    pub added: usize,
}

/// Persistent control-plane state. See the module docs for the rules.
pub trait Store: Send + Sync {
    // ---------------------------------------------------------- accounts

    /// Creates an account with a fresh random 12-digit id.
    /// `Conflict(NameTaken)` if the name is used.
    fn create_account(&self, name: &AccountName, is_admin: bool) -> Result<Account>;
    fn get_account(&self, account_id: &AccountId) -> Result<Account>;
    fn get_account_by_name(&self, name: &str) -> Result<Account>;
    /// All accounts, ordered by `(created_at, account_id)`.
    fn list_accounts(&self, page: &PageRequest) -> Result<Page<Account>>;

    // ------------------------------------------------------- access keys

    /// Creates a key (`AKIA...` id, 40-character secret) for the account.
    fn create_access_key(&self, account_id: &AccountId) -> Result<CreatedAccessKey>;
    /// The account's keys, revoked ones included, oldest first. No secrets.
    fn list_access_keys(&self, account_id: &AccountId) -> Result<Vec<AccessKey>>;
    /// Marks the key revoked (idempotent: revoking again keeps the first
    /// revocation time). `NotFound` if the key is not the account's.
    fn revoke_access_key(&self, account_id: &AccountId, access_key_id: &str) -> Result<AccessKey>;
    /// The owner and secret of an active key; `None` for unknown or revoked
    /// keys. Runs on every request: a single primary-key lookup.
    fn secret_for(&self, access_key_id: &str) -> Result<Option<(AccountId, SecretAccessKey)>>;

    // ------------------------------------------------------------ images

    /// `Conflict(NameTaken { kind: Image, .. })` if the account already has
    /// an image with this name, `Conflict(AlreadyExists)` if the id or ARN is
    /// taken. `new.tags` are written on `new.arn` in the same transaction.
    fn create_image(&self, account_id: &AccountId, new: &NewImage) -> Result<Image>;
    fn get_image(&self, account_id: &AccountId, image_id: &str) -> Result<Image>;
    fn get_image_by_arn(&self, account_id: &AccountId, arn: &str) -> Result<Image>;
    fn get_image_by_name(&self, account_id: &AccountId, name: &str) -> Result<Image>;
    fn list_images(
        &self,
        account_id: &AccountId,
        filter: &ImageFilter,
        page: &PageRequest,
    ) -> Result<Page<Image>>;
    fn update_image(
        &self,
        account_id: &AccountId,
        image_id: &str,
        update: &StateUpdate,
    ) -> Result<Image>;
    /// Images of every account in one of `states` (all if empty), for the
    /// control plane at start-up. Not for answering API callers.
    fn list_images_all_accounts(
        &self,
        states: &[String],
        page: &PageRequest,
    ) -> Result<Page<Image>>;
    /// Deletes the image, all its versions and builds, and the tags on its ARN.
    fn delete_image(&self, account_id: &AccountId, image_id: &str) -> Result<()>;

    // ---------------------------------------------------- image versions

    /// Allocates the image's next version number ("1", "2", ...) and inserts
    /// the version, atomically. `NotFound` if the image is not the account's.
    fn create_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        new: &NewImageVersion,
    ) -> Result<ImageVersion>;
    fn get_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
    ) -> Result<ImageVersion>;
    /// `NotFound` (kind Image) if the image is not the account's.
    fn list_image_versions(
        &self,
        account_id: &AccountId,
        image_id: &str,
        page: &PageRequest,
    ) -> Result<Page<ImageVersion>>;
    fn update_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        update: &VersionUpdate,
    ) -> Result<ImageVersion>;
    /// Deletes the version and its builds.
    fn delete_image_version(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
    ) -> Result<()>;

    // ------------------------------------------------------------ builds

    /// `NotFound` (kind ImageVersion) if the version is not the account's.
    fn create_build(&self, account_id: &AccountId, new: &NewBuild) -> Result<Build>;
    fn get_build(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
    ) -> Result<Build>;
    /// `NotFound` (kind ImageVersion) if the version is not the account's.
    fn list_builds(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        filter: &BuildFilter,
        page: &PageRequest,
    ) -> Result<Page<Build>>;
    fn update_build(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
        update: &StateUpdate,
    ) -> Result<Build>;
    fn delete_build(
        &self,
        account_id: &AccountId,
        image_id: &str,
        version: &str,
        build_id: &str,
    ) -> Result<()>;
    /// Builds of every account in one of `states` (all if empty), for the
    /// builder/reconciler at start-up. Not for answering API callers.
    fn list_builds_all_accounts(
        &self,
        states: &[String],
        page: &PageRequest,
    ) -> Result<Page<Build>>;

    // ---------------------------------------------------------- microvms

    /// `Conflict(AlreadyExists)` if the id is taken.
    fn create_microvm(&self, account_id: &AccountId, new: &NewMicrovm) -> Result<Microvm>;
    fn get_microvm(&self, account_id: &AccountId, microvm_id: &str) -> Result<Microvm>;
    fn list_microvms(
        &self,
        account_id: &AccountId,
        filter: &MicrovmFilter,
        page: &PageRequest,
    ) -> Result<Page<Microvm>>;
    /// Number of the account's microVMs in one of `states` (all if empty),
    /// for quotas.
    fn count_microvms(&self, account_id: &AccountId, states: &[String]) -> Result<u64>;
    fn update_microvm(
        &self,
        account_id: &AccountId,
        microvm_id: &str,
        update: &StateUpdate,
    ) -> Result<Microvm>;
    fn delete_microvm(&self, account_id: &AccountId, microvm_id: &str) -> Result<()>;
    /// MicroVMs of every account in one of `states` (all if empty), for the
    /// reconciler. Not for answering API callers.
    fn list_microvms_all_accounts(
        &self,
        states: &[String],
        page: &PageRequest,
    ) -> Result<Page<Microvm>>;

    // -------------------------------------------------------------- tags

    /// Sets (inserts or overwrites) the given tags on the resource, unless
    /// it would then have more than `max_tags` tags (the ones it has, plus
    /// the new keys; overwritten keys count once): then nothing is written
    /// and the inner result is [`TooManyTags`]. The count and the write are
    /// one transaction, so concurrent callers cannot pass the limit together.
    /// The store does not check that the resource exists.
    fn put_tags(
        &self,
        account_id: &AccountId,
        resource_arn: &str,
        tags: &BTreeMap<String, String>,
        max_tags: usize,
    ) -> Result<Result<(), TooManyTags>>;
    /// The resource's tags (empty map if none).
    fn list_tags(
        &self,
        account_id: &AccountId,
        resource_arn: &str,
    ) -> Result<BTreeMap<String, String>>;
    /// Removes the given keys; absent keys are ignored.
    fn remove_tags(
        &self,
        account_id: &AccountId,
        resource_arn: &str,
        keys: &[String],
    ) -> Result<()>;

    // ------------------------------------------------------- idempotency

    /// Atomically inserts a record for `(account, operation, client_token)`
    /// unless one exists, and says what was there. A record older than
    /// [`crate::IDEMPOTENCY_RECORD_TTL_SECS`], or still in progress after
    /// [`crate::IDEMPOTENCY_IN_PROGRESS_TTL_SECS`], counts as absent and is
    /// replaced. `request_fingerprint` is
    /// the hex SHA-256 of the canonical request (see
    /// [`crate::request_fingerprint`]).
    fn idempotency_begin(
        &self,
        account_id: &AccountId,
        operation: &str,
        client_token: &str,
        request_fingerprint: &str,
        now_secs: i64,
    ) -> Result<IdempotencyBegin>;
    /// Saves the response of a started operation. `NotFound` if there is no
    /// record, `Conflict(AlreadyExists)` if it was already completed.
    fn idempotency_complete(
        &self,
        account_id: &AccountId,
        operation: &str,
        client_token: &str,
        response: &StoredResponse,
    ) -> Result<()>;
    /// Forgets a started, not completed record (no-op otherwise), so that a
    /// retry with the same token runs the operation again.
    fn idempotency_abort(
        &self,
        account_id: &AccountId,
        operation: &str,
        client_token: &str,
    ) -> Result<()>;
    /// Deletes records created before `older_than_secs` (epoch seconds; the
    /// server passes now - 24 h). Returns how many were deleted.
    fn purge_idempotency(&self, older_than_secs: i64) -> Result<u64>;
}
