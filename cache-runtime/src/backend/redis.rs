//! The Redis backend, for one server or a Redis Cluster (see [`Link`]): every operation
//! bounded by the per-operation timeout.

use crate::CacheError;
use crate::backend::Found;
use crate::backend::in_flight::FillsInFlight;
use crate::backend::link::{Link, ScanTarget};
use crate::backend::tiered::{self, Tier};
use crate::lease::{self, Acquired};
use crate::notify::{self, Listener};
use crate::pattern::KeyPattern;
use crate::tags::{self, TagKeys, Token, Versions};
use bytes::Bytes;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::time::Instant;

/// Deletes an entry and its lease together (see [`lease::INVALIDATE_SCRIPT`]).
static INVALIDATE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(lease::INVALIDATE_SCRIPT));
/// Takes an entry's lease (see [`lease::ACQUIRE_SCRIPT`]).
static ACQUIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(lease::ACQUIRE_SCRIPT));
/// Stores through a lease (see [`lease::FILL_SCRIPT`]).
static FILL: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(lease::FILL_SCRIPT));
/// Gives a lease back (see [`lease::RELEASE_SCRIPT`]).
static RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(lease::RELEASE_SCRIPT));
/// Lengthens a tag's version key when it runs short (see [`tags::EXTEND_SCRIPT`]).
static EXTEND: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(tags::EXTEND_SCRIPT));
/// Every script above. Redis loses them together (a restart, a failover, `SCRIPT FLUSH`), so
/// they are loaded again together: a fill, which always follows its lease's acquire, then
/// meets `NOSCRIPT` only if the scripts were lost in between, whose retry would go behind requests sent after the fill (a fill
/// whose reply the caller does not wait for must stay ahead of the caller's next read).
static SCRIPTS: [&LazyLock<redis::Script>; 5] = [&INVALIDATE, &ACQUIRE, &FILL, &RELEASE, &EXTEND];

/// How long a copy of a tag token is kept in the in-process tier, at least (a function's
/// `local` may keep it longer): tag tokens change only when their tag is invalidated, which
/// Redis reports; the bound is for a tracking connection gone silent.
const TAG_COPY_MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct RedisBackend {
    link: Link,
    op_timeout: Duration,
    /// The in-process tier and the connections that keep it coherent, when the cache has one
    /// (see [`CacheBuilder::local_capacity`](crate::CacheBuilder::local_capacity)).
    tier: Option<Tier>,
    /// Fills sent and not yet answered, with a tier (see [`FillsInFlight`]).
    fills: Arc<FillsInFlight>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("cluster", &matches!(self.link, Link::Cluster(_)))
            .field("op_timeout", &self.op_timeout)
            .field("local", &self.tier)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    pub(crate) fn new(link: Link, op_timeout: Duration) -> Self {
        RedisBackend {
            link,
            op_timeout,
            tier: None,
            fills: Arc::default(),
        }
    }

    /// This backend with an in-process tier.
    pub(crate) fn with_local(self, tier: Tier) -> Self {
        RedisBackend {
            tier: Some(tier),
            ..self
        }
    }

    /// See [`Backend::sync_local`](super::Backend::sync_local).
    pub(crate) async fn sync_local(&self, probe_key: &str) -> Result<(), CacheError> {
        match &self.tier {
            Some(tier) => tier.sync(probe_key).await,
            None => Ok(()),
        }
    }

    pub(crate) fn local_bytes(&self) -> u64 {
        self.tier
            .as_ref()
            .map_or(0, |tier| tier.copies().weighted_size())
    }

    /// Drops this process's copies of `keys` after it changed them: its own change must be
    /// seen by its next call, even before Redis's invalidation arrives.
    fn forget<'k>(&self, keys: impl IntoIterator<Item = &'k str>) {
        if let Some(tier) = &self.tier {
            tier.copies().drop_keys(keys.into_iter().map(str::as_bytes));
        }
    }

    /// Drops every copy this process holds (after a change it cannot list key by key).
    fn forget_all(&self) {
        if let Some(tier) = &self.tier {
            tier.copies().drop_all();
        }
    }

    /// Why Redis cannot be reached, when the connection's own error hides it (see
    /// [`Link::diagnose`]).
    pub(crate) async fn diagnose(&self) -> Option<CacheError> {
        self.link.diagnose(self.op_timeout).await
    }

    /// Listens for the fill of `entry`: subscribes to its channel unless this process already
    /// does. `None` when this connection cannot receive pushes.
    pub(crate) async fn listen(&self, entry: &str) -> Result<Option<Listener>, CacheError> {
        let Some(notices) = self.link.notices() else {
            return Ok(None);
        };
        let channel = notify::channel(entry);
        let (receiver, first) = notices.listen(&channel);
        let unsubscribe: Box<dyn FnOnce(String) + Send> = {
            let (link, op_timeout) = (self.link.clone(), self.op_timeout);
            Box::new(move |channel: String| {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ordered = link.subscriptions().lock().await;
                        // A new listener may have come since: then it keeps the subscription.
                        // Bounded like every operation: the lock is held meanwhile, and a
                        // server that never answers must not stop every later subscription.
                        let listened = link
                            .notices()
                            .is_some_and(|notices| notices.is_listened(&channel));
                        if !listened {
                            let unsubscribe = link.unsubscribe(channel);
                            let _ = tokio::time::timeout(op_timeout, unsubscribe).await;
                        }
                    });
                }
            })
        };
        let listener = Listener::new(
            notices.clone(),
            channel.clone(),
            receiver,
            Some(unsubscribe),
        );
        if first {
            let _ordered = self.link.subscriptions().lock().await;
            let deadline = Instant::now() + self.op_timeout;
            self.bounded(deadline, self.link.subscribe(vec![channel]))
                .await?;
        }
        Ok(Some(listener))
    }

    /// Sends one request, bounded by `deadline`, and lets the connection learn from how it
    /// went (see [`RedisConnection::observe`]). A timeout carries the budget the request had.
    async fn bounded<T>(
        &self,
        deadline: Instant,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let result = match tokio::time::timeout_at(deadline, request).await {
            Ok(result) => result.map_err(CacheError::from),
            Err(_) => Err(CacheError::Timeout(budget)),
        };
        self.link.observe(&result);
        result
    }

    async fn run_until<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        deadline: Instant,
    ) -> Result<T, CacheError> {
        // A cheap handle (an Arc); commands need it mutably.
        let mut connection = self.link.handle();
        self.bounded(deadline, command.query_async(&mut connection))
            .await
    }

    /// `TIME`, in ms since the Unix epoch.
    pub(crate) async fn server_time_ms(&self, deadline: Instant) -> Result<u64, CacheError> {
        let (seconds, micros): (u64, u64) = self.run_until(&redis::cmd("TIME"), deadline).await?;
        Ok(seconds.saturating_mul(1000).saturating_add(micros / 1000))
    }

    pub(crate) async fn get(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<Bytes>, CacheError> {
        let value: Option<Vec<u8>> = self.run_until(redis::cmd("GET").arg(key), deadline).await?;
        Ok(value.map(Bytes::from))
    }

    /// The entry and the current tokens of its tags. With an in-process tier, through it
    /// (see [`tiered::read`]) when there is something to keep (`keep`, or tag tokens):
    /// the copies held, and the rest in one command on the tracking connection. Otherwise in
    /// one command on the main connection (see `read_remote`).
    pub(crate) async fn read(
        &self,
        entry: &str,
        tag_keys: TagKeys<'_>,
        keep: Option<Duration>,
        slide: Option<Duration>,
        deadline: Instant,
    ) -> Result<Found, CacheError> {
        if let Some(ttl) = slide {
            let (entry, versions) = self.read_sliding(entry, tag_keys, ttl, deadline).await?;
            return Ok(Found {
                entry,
                versions,
                local: false,
            });
        }
        if let Some(tier) = &self.tier
            && (keep.is_some() || !tag_keys.is_empty())
            && !self.fills.contains(entry)
        {
            let keys: smallvec::SmallVec<[&str; 5]> =
                std::iter::once(entry).chain(tag_keys.iter()).collect();
            // Tag tokens are kept for every function: they are what a tagged hit would
            // otherwise read from Redis besides the entry.
            let for_tags = Some(keep.map_or(TAG_COPY_MAX_AGE, |keep| keep.max(TAG_COPY_MAX_AGE)));
            let max_ages: smallvec::SmallVec<[Option<Duration>; 5]> = std::iter::once(keep)
                .chain(tag_keys.iter().map(|_| for_tags))
                .collect();
            if let Some(read) = tiered::read(tier, &keys, &max_ages, deadline).await {
                let (mut values, local) = read?;
                let versions = values
                    .drain(1..)
                    .map(|token| token.and_then(|bytes| tags::parse_token(&bytes)))
                    .collect();
                return Ok(Found {
                    entry: values.pop().flatten(),
                    versions,
                    local,
                });
            }
        }
        let (entry, versions) = self.read_remote(entry, tag_keys, deadline).await?;
        Ok(Found {
            entry,
            versions,
            local: false,
        })
    }

    /// `MGET entry tag..` (a plain `GET` without tags): one round trip, and on one server one
    /// command. On a cluster redis-rs splits the `MGET` per slot and sends the parts in
    /// parallel (one round trip of wall time). `MGET` answers nil for a key of another type:
    /// such an entry is a miss that the fill overwrites.
    async fn read_remote(
        &self,
        entry: &str,
        tag_keys: TagKeys<'_>,
        deadline: Instant,
    ) -> Result<(Option<Bytes>, Versions), CacheError> {
        if tag_keys.is_empty() {
            return Ok((self.get(entry, deadline).await?, Versions::new()));
        }
        let mut command = redis::cmd("MGET");
        command.arg(entry).arg(tag_keys.function).arg(tag_keys.user);
        // Parsed from the reply as is: the entry's bytes are moved, not copied.
        let reply: redis::Value = self.run_until(&command, deadline).await?;
        let redis::Value::Array(values) = reply else {
            return Err(CacheError::unexpected_reply("MGET"));
        };
        let mut values = values.into_iter();
        let entry = match values.next() {
            Some(redis::Value::BulkString(bytes)) => Some(Bytes::from(bytes)),
            _ => None,
        };
        let versions = values
            .map(|value| match value {
                redis::Value::BulkString(bytes) => tags::parse_token(&bytes),
                _ => None,
            })
            .collect();
        Ok((entry, versions))
    }

    /// One `MGET` of every entry, then every distinct tag key (see
    /// [`Backend::read_many`](super::Backend::read_many)).
    pub(crate) async fn read_many(
        &self,
        entries: &[(&str, TagKeys<'_>)],
        deadline: Instant,
    ) -> Result<Vec<(Option<Bytes>, Versions)>, CacheError> {
        let mut tag_index: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::new();
        let mut command = redis::cmd("MGET");
        for (entry, _) in entries {
            command.arg(*entry);
        }
        for tag in entries.iter().flat_map(|(_, tags)| tags.iter()) {
            let next = tag_index.len();
            if let std::collections::hash_map::Entry::Vacant(slot) = tag_index.entry(tag) {
                slot.insert(next);
                command.arg(tag);
            }
        }
        let reply: redis::Value = self.run_until(&command, deadline).await?;
        let redis::Value::Array(values) = reply else {
            return Err(CacheError::unexpected_reply("MGET"));
        };
        if values.len() != entries.len() + tag_index.len() {
            return Err(CacheError::unexpected_reply("MGET"));
        }
        let mut values = values.into_iter();
        let bytes: Vec<Option<Bytes>> = values
            .by_ref()
            .take(entries.len())
            .map(|value| match value {
                redis::Value::BulkString(bytes) => Some(Bytes::from(bytes)),
                _ => None,
            })
            .collect();
        let tokens: Vec<Option<Token>> = values
            .map(|value| match value {
                redis::Value::BulkString(bytes) => tags::parse_token(&bytes),
                _ => None,
            })
            .collect();
        Ok(entries
            .iter()
            .zip(bytes)
            .map(|((_, tag_keys), bytes)| {
                let versions = tag_keys.iter().map(|tag| tokens[tag_index[tag]]).collect();
                (bytes, versions)
            })
            .collect())
    }

    /// [`RedisBackend::read_remote`] for a sliding entry: `GETEX entry PX ttl` (which keeps an
    /// entry found for `ttl` from now) and, with tags, the `MGET` of their tokens sent at
    /// once behind it: one round trip of wall time. Two commands because an `MGET` cannot
    /// push an expiry out.
    async fn read_sliding(
        &self,
        entry: &str,
        tag_keys: TagKeys<'_>,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<(Option<Bytes>, Versions), CacheError> {
        let mut getex = redis::cmd("GETEX");
        getex
            .arg(entry)
            .arg("PX")
            .arg(crate::clock::millis(ttl).max(1));
        let get = async {
            let value: Option<Vec<u8>> = self.run_until(&getex, deadline).await?;
            Ok::<_, CacheError>(value.map(Bytes::from))
        };
        if tag_keys.is_empty() {
            return Ok((get.await?, Versions::new()));
        }
        let mut mget = redis::cmd("MGET");
        mget.arg(tag_keys.function).arg(tag_keys.user);
        let tokens = async {
            let values: Vec<Option<Vec<u8>>> = self.run_until(&mget, deadline).await?;
            Ok::<_, CacheError>(values)
        };
        let (entry, tokens) = tokio::join!(get, tokens);
        let versions = tokens?
            .into_iter()
            .map(|token| token.and_then(|bytes| tags::parse_token(&bytes)))
            .collect();
        Ok((entry?, versions))
    }

    /// Makes sure each of `keys` holds a tag token, creating the missing ones (`SET NX PX
    /// ttl`) and replacing values that are not tokens; the tokens, in order.
    pub(crate) async fn ensure_tags(
        &self,
        keys: &[&str],
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Vec<Token>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let fresh: Vec<Token> = keys.iter().map(|_| tags::new_token()).collect();
        // One deadline for both steps.
        let replies: Vec<redis::RedisResult<Option<Vec<u8>>>> = self
            .per_slot(keys, deadline, |pipe, group| {
                pipe.ignore_errors();
                for &index in group {
                    pipe.cmd("SET")
                        .arg(keys[index])
                        .arg(&fresh[index][..])
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(ttl))
                        .ignore()
                        .get(keys[index]);
                }
            })
            .await?;
        let mut tokens = Vec::with_capacity(keys.len());
        let mut overwrite = Vec::new();
        for ((key, token), reply) in keys.iter().zip(&fresh).zip(replies) {
            match reply
                .ok()
                .flatten()
                .and_then(|bytes| tags::parse_token(&bytes))
            {
                Some(current) => tokens.push(current),
                None => {
                    // Not a token (a value of another type, or garbage): ours replaces it.
                    overwrite.push((*key, token));
                    tokens.push(*token);
                }
            }
        }
        if !overwrite.is_empty() {
            let overwritten: Vec<&str> = overwrite.iter().map(|(key, _)| *key).collect();
            let overwritten_now: Result<Vec<()>, _> = self
                .per_slot(&overwritten, deadline, |pipe, group| {
                    for &index in group {
                        let (key, token) = overwrite[index];
                        pipe.cmd("SET")
                            .arg(key)
                            .arg(&token[..])
                            .arg("PX")
                            .arg(millis(ttl));
                    }
                })
                .await;
            self.forget(overwritten.iter().copied());
            overwritten_now?;
        }
        Ok(tokens)
    }

    /// Keeps tag version keys at least `at_least` more, giving those with less left `to`
    /// ([`tags::EXTEND_SCRIPT`], one call per key in each slot's pipeline).
    pub(crate) async fn extend_tags(
        &self,
        keys: TagKeys<'_>,
        at_least: Duration,
        to: Duration,
    ) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = keys.iter().collect();
        let deadline = Instant::now() + self.op_timeout;
        let (at_least, to, keys) = (millis(at_least), millis(to), &keys[..]);
        let extend = |load: bool| {
            self.per_slot::<_, i64>(keys, deadline, move |pipe, group| {
                if load {
                    pipe.load_script(&EXTEND).ignore();
                }
                for &index in group {
                    let mut invocation = EXTEND.key(keys[index]);
                    invocation.arg(at_least).arg(to);
                    pipe.invoke_script(&invocation);
                }
            })
        };
        match extend(false).await {
            // Loaded with the others unless another version of redis-memo loaded them.
            Err(CacheError::Redis(error)) if is_no_script(&error) => {
                extend(true).await?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }

    /// Deletes tag version keys, one `DEL` each (they may live in different Cluster slots);
    /// how many existed.
    pub(crate) async fn invalidate_tags(&self, keys: &[String]) -> Result<u64, CacheError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + self.op_timeout;
        let removed: Result<Vec<u64>, _> = self
            .per_slot(keys, deadline, |pipe, group| {
                for &index in group {
                    pipe.del(&keys[index]);
                }
            })
            .await;
        self.forget(keys.iter().map(String::as_str));
        Ok(removed?.into_iter().sum())
    }

    /// Runs one pipeline per group of `keys` that may share a pipeline (all of them on one
    /// server, one slot each on a cluster: see [`Link::slot_groups`]), the groups in parallel.
    /// `build` fills a group's pipeline from the positions in `keys` it holds, with exactly one
    /// reply per position; the replies come back in the order of `keys`.
    async fn per_slot<K, T>(
        &self,
        keys: &[K],
        deadline: Instant,
        build: impl Fn(&mut redis::Pipeline, &[usize]),
    ) -> Result<Vec<T>, CacheError>
    where
        K: AsRef<[u8]>,
        T: redis::FromRedisValue,
    {
        let groups = self.link.slot_groups(keys);
        let pipes: Vec<redis::Pipeline> = groups
            .iter()
            .map(|group| {
                let mut pipe = redis::pipe();
                build(&mut pipe, group);
                pipe
            })
            .collect();
        let replies = futures_util::future::join_all(
            pipes
                .iter()
                .map(|pipe| self.pipeline_until::<Vec<T>>(pipe, deadline)),
        )
        .await;
        let mut ordered: Vec<Option<T>> = keys.iter().map(|_| None).collect();
        for (group, replies) in groups.iter().zip(replies) {
            let replies = replies?;
            if replies.len() != group.len() {
                return Err(CacheError::unexpected_reply("pipeline"));
            }
            for (&index, reply) in group.iter().zip(replies) {
                ordered[index] = Some(reply);
            }
        }
        ordered
            .into_iter()
            .map(|reply| reply.ok_or_else(|| CacheError::unexpected_reply("pipeline")))
            .collect()
    }

    /// `SET lease token PX ttl`: the lease is `token`'s, whoever held it.
    pub(crate) async fn seize_lease(
        &self,
        lease: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let mut command = redis::cmd("SET");
        command.arg(lease).arg(token).arg("PX").arg(millis(ttl));
        let deadline = Instant::now() + self.op_timeout;
        self.run_until(&command, deadline).await
    }

    async fn pipeline_until<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        deadline: Instant,
    ) -> Result<T, CacheError> {
        let mut connection = self.link.handle();
        self.bounded(deadline, pipe.query_async(&mut connection))
            .await
    }

    pub(crate) async fn acquire_lease(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Acquired, CacheError> {
        let mut invocation = ACQUIRE.key(entry);
        invocation.key(lease).arg(token).arg(millis(ttl));
        let (acquired, value): (i64, Option<Vec<u8>>) =
            self.invoke_until(&invocation, deadline).await?;
        Ok(if acquired == 1 {
            Acquired::Held(value.map(Bytes::from))
        } else {
            let writer = value.as_deref().is_some_and(lease::is_writer_token);
            Acquired::Busy { writer }
        })
    }

    pub(crate) async fn fill(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let mut invocation = FILL.key(entry);
        invocation
            .key(lease)
            .arg(token)
            .arg(value.as_ref())
            .arg(millis(ttl))
            .arg(notify::channel(entry))
            .arg(self.link.publish_command());
        // With a tier, reads of the entry go behind the fill until it is answered.
        let _in_flight = self.tier.is_some().then(|| self.fills.start(entry));
        let stored = self.invoke::<i64>(&invocation).await;
        self.forget([entry]);
        Ok(stored? == 1)
    }

    pub(crate) async fn release(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        clear_entry: bool,
    ) -> Result<(), CacheError> {
        let mut invocation = RELEASE.key(lease);
        invocation
            .key(entry)
            .arg(token)
            .arg(if clear_entry { "1" } else { "0" })
            .arg(notify::channel(entry))
            .arg(self.link.publish_command());
        let released = self.invoke::<i64>(&invocation).await;
        if clear_entry {
            self.forget([entry]);
        }
        released.map(drop)
    }

    /// Removes every entry and lease `pattern` selects with SCAN (never KEYS, which
    /// blocks the server), in batches; the number of entries removed.
    ///
    /// Each entry found, by its own key or its lease's, is deleted together with its lease
    /// (the invalidation script, pipelined per batch), so no computation can fill it after.
    /// SCAN only promises the keys that exist for its whole duration, and a computation that
    /// held its lease when this began may fill its entry before the scan reaches the lease:
    /// that entry exists from then on, so a second full pass removes it.
    pub(crate) async fn invalidate_matching(
        &self,
        pattern: &KeyPattern,
    ) -> Result<u64, CacheError> {
        let mut removed = 0;
        for _pass in 0..2 {
            let pass = self.invalidate_matching_once(pattern).await;
            self.forget_all();
            removed += pass?;
        }
        Ok(removed)
    }

    async fn invalidate_matching_once(&self, pattern: &KeyPattern) -> Result<u64, CacheError> {
        let targets = self
            .bounded(Instant::now() + self.op_timeout, self.link.scan_targets())
            .await?;
        let mut removed = 0;
        for target in &targets {
            removed += self.invalidate_matching_on(target, pattern).await?;
        }
        Ok(removed)
    }

    /// One full `SCAN` of one server (or cluster primary), removing what `pattern` selects.
    async fn invalidate_matching_on(
        &self,
        target: &ScanTarget,
        pattern: &KeyPattern,
    ) -> Result<u64, CacheError> {
        // The server narrows by the pattern's literal beginning; `selects` decides.
        let scan_match = pattern.scan_match();
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&scan_match)
                .arg("COUNT")
                .arg(1000)
                .clone();
            let mut handle = self.link.handle();
            let (next, keys): (u64, Vec<String>) = self
                .bounded(
                    Instant::now() + self.op_timeout,
                    target.run(&mut handle, &scan),
                )
                .await?;
            let mut entries: Vec<&str> = keys
                .iter()
                .filter(|key| pattern.selects(key))
                .map(|key| key.strip_suffix(lease::LEASE_SUFFIX).unwrap_or(key))
                .collect();
            entries.sort_unstable();
            entries.dedup();
            removed += self.invalidate_entries(&entries).await?;
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Deletes each of `entries` together with its lease (the invalidation script, waking
    /// `lock` waiters), pipelined: one round trip (per slot on a cluster, in parallel); how many
    /// entries existed.
    pub(crate) async fn invalidate_entries(&self, entries: &[&str]) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let leases: Vec<String> = entries
            .iter()
            .map(|entry| lease::lease_key(entry))
            .collect();
        let channels: Vec<String> = entries.iter().map(|entry| notify::channel(entry)).collect();
        let publish = self.link.publish_command();
        let invocations: Vec<redis::ScriptInvocation<'_>> = entries
            .iter()
            .zip(&leases)
            .zip(&channels)
            .map(|((entry, lease), channel)| {
                let mut invocation = INVALIDATE.key(*entry);
                invocation.key(lease).arg(channel).arg(publish);
                invocation
            })
            .collect();
        let deleted: Result<Vec<i64>, _> = self
            .per_slot(entries, Instant::now() + self.op_timeout, |pipe, group| {
                // A pipeline runs EVALSHA without loading the script: load it first.
                pipe.load_script(&INVALIDATE).ignore();
                for &index in group {
                    pipe.invoke_script(&invocations[index]);
                }
            })
            .await;
        self.forget(entries.iter().copied());
        Ok(deleted?.into_iter().filter(|&count| count > 0).count() as u64)
    }

    pub(crate) async fn invalidate(&self, entry: &str, lease: &str) -> Result<bool, CacheError> {
        let mut invocation = INVALIDATE.key(entry);
        invocation
            .key(lease)
            .arg(notify::channel(entry))
            .arg(self.link.publish_command());
        let removed = self.invoke::<i64>(&invocation).await;
        self.forget([entry]);
        Ok(removed? > 0)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        self.invoke_until(invocation, Instant::now() + self.op_timeout)
            .await
    }

    async fn invoke_until<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        deadline: Instant,
    ) -> Result<T, CacheError> {
        let mut connection = self.link.handle();
        let call = redis::Cmd::invoke_script(invocation);
        let request = async {
            match call.query_async::<T>(&mut connection).await {
                Err(error) if is_no_script(&error) => {
                    let mut pipe = redis::pipe();
                    for script in SCRIPTS {
                        pipe.load_script(script).ignore();
                    }
                    pipe.invoke_script(invocation);
                    let (value,): (T,) = pipe.query_async(&mut connection).await?;
                    Ok(value)
                }
                other => other,
            }
        };
        self.bounded(deadline, request).await
    }
}

/// Redis's `NOSCRIPT`: the script is not loaded (a restart, a failover, `SCRIPT FLUSH`).
fn is_no_script(error: &redis::RedisError) -> bool {
    error.kind() == redis::ServerErrorKind::NoScript.into()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
