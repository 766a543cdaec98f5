//! The index of wildcard subscriptions: a trie over filter segments that a
//! publish walks only where its topic can still match, a bounded cache of
//! match results per topic, and the caps that bound what one client can make
//! every publish cost.
//!
//! # Cost of a publish
//!
//! Without a cache hit, a publish visits the trie nodes whose path matches a
//! prefix of its topic (a literal segment equal to the topic's, or `*`) and
//! below which some filter can still match the topic's remaining length
//! (each node knows the remaining depths of the filters below it). For a
//! topic, the nodes visited at depth `d` differ only in which of their first
//! `d` segments are `*`, so with at most `k` `*` per filter
//! (`limits.max_filter_wildcards`) and at most `s` segments per wildcard
//! filter (`limits.max_wildcard_filter_segments`) a miss visits at most
//! `sum(d = 0..=s) sum(j = 0..=k) C(d, j)` nodes, whatever the number of
//! filters: 9,401 with the defaults (`k = 4`, `s = 16`), each one lookup
//! among the node's literal children by the topic segment's hash (computed
//! once per publish, not once per node), plus the matches themselves. The per-connection, per-subject and
//! broker-wide caps bound the index's memory and how much of that one token
//! can build.
//!
//! A hit costs one hash lookup of the topic. The cache is emptied on every
//! change of the index (entries are never stale) and is bounded in entries
//! and bytes; when full, entries not used since the last sweep go first, so
//! a flood of distinct topics evicts its own entries before a steady
//! publisher's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use hashbrown::HashTable;

use sockeye_protocol::{TopicFilter, TopicName};

use crate::config::LimitsConfig;
use crate::peer::{ConnId, Peer};

/// Broker-wide bounds of the index and its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WildcardLimits {
    /// Most wildcard subscriptions held by connections of one token `sub`.
    pub(crate) per_subject: usize,
    /// Most wildcard subscriptions held in the whole broker.
    pub(crate) total: usize,
    /// Most topics whose match results are cached (0: no cache).
    pub(crate) cache_entries: usize,
    /// Most bytes the cache accounts for (keys, results, per-entry overhead).
    pub(crate) cache_bytes: usize,
}

impl WildcardLimits {
    pub(crate) fn from_config(limits: &LimitsConfig) -> Self {
        Self {
            per_subject: limits.max_wildcard_subscriptions_per_subject,
            total: limits.max_wildcard_subscriptions_total,
            cache_entries: limits.wildcard_match_cache,
            cache_bytes: usize::try_from(limits.wildcard_match_cache_bytes.as_u64())
                .unwrap_or(usize::MAX),
        }
    }
}

impl Default for WildcardLimits {
    fn default() -> Self {
        Self::from_config(&LimitsConfig::default())
    }
}

/// Why a wildcard subscription was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WildcardRefusal {
    /// The broker holds `limits.max_wildcard_subscriptions_total`.
    #[error("the broker holds its maximum of {limit} wildcard subscriptions")]
    Total { limit: usize },
    /// The token's `sub` holds `limits.max_wildcard_subscriptions_per_subject`.
    #[error(
        "connections of this token's `sub` hold their maximum of {limit} wildcard subscriptions"
    )]
    Subject { limit: usize },
}

/// Why a wildcard filter's shape is refused (`invalid_topic`), if it is:
/// too many `*` segments, or too many segments.
pub(crate) fn shape_error(filter: &TopicFilter, limits: &LimitsConfig) -> Option<String> {
    let mut segments = 0;
    let mut stars = 0;
    for segment in filter.segments() {
        segments += 1;
        stars += usize::from(segment == "*");
    }
    if stars > limits.max_filter_wildcards {
        return Some(format!(
            "`{filter}` has {stars} `*` segments; at most {} are allowed per filter",
            limits.max_filter_wildcards
        ));
    }
    if segments > limits.max_wildcard_filter_segments {
        return Some(format!(
            "`{filter}` has {segments} segments; a wildcard filter may have at most {}",
            limits.max_wildcard_filter_segments
        ));
    }
    None
}

/// Wildcard filters and the peers subscribed to each.
#[derive(Debug, Default)]
pub(crate) struct WildcardIndex {
    root: Node,
    len: usize,
    /// Wildcard subscriptions per token `sub`; subjects with none are absent.
    per_subject: HashMap<String, usize>,
    limits: WildcardLimits,
    cache: MatchCache,
    /// Hashes literal segments: keyed SipHash, so filter literals chosen by
    /// clients cannot be made to collide.
    hasher: RandomState,
}

/// Cache entries dropped by a change of the index: dropped by the caller
/// once it has released the index's write lock, so that freeing them does
/// not hold up publishes.
#[must_use = "drop it after releasing the index lock"]
#[derive(Debug)]
pub(crate) struct StaleMatches(#[allow(dead_code)] CacheMap);

#[derive(Debug, Default)]
struct Node {
    /// Children by literal segment, with the segment's hash: a publish
    /// hashes each of its segments once and probes every node with it.
    literal: Literals,
    /// The `*` child.
    star: Option<Box<Node>>,
    /// Peers whose filter ends here.
    here: Vec<Arc<Peer>>,
    /// Peers whose filter ends here with a trailing `>`.
    tail: Vec<Arc<Peer>>,
    /// How many filters at or below this node have each [`Reach`], so that
    /// `ends` and `tails` can be kept exact on removal without visiting
    /// every child.
    reaches: Vec<(Reach, u32)>,
    /// Bit `r` (63: 63 or more): a filter without `>` ends `r` segments
    /// below this node.
    ends: u64,
    /// Bit `r` (63: 63 or more): a filter with a trailing `>` has its `>`
    /// `r` segments below this node.
    tails: u64,
}

/// A literal child: its segment's hash, the segment, and the node.
#[derive(Debug)]
struct Literal {
    hash: u64,
    segment: Box<str>,
    node: Node,
}

/// A node's literal children. Most nodes have one (the rest of a filter
/// nobody shares): a few are kept in a vector of exactly their number,
/// scanned by hash, and only more in a hash table, whose smallest
/// allocation holds four children.
#[derive(Debug)]
enum Literals {
    Few(Vec<Literal>),
    Many(HashTable<Literal>),
}

/// Most children kept in [`Literals::Few`].
const FEW_LITERALS: usize = 8;

impl Default for Literals {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Literals {
    fn is_empty(&self) -> bool {
        match self {
            Self::Few(few) => few.is_empty(),
            Self::Many(many) => many.is_empty(),
        }
    }

    fn get(&self, segment: &str, hash: u64) -> Option<&Node> {
        let found = match self {
            Self::Few(few) => few.iter().find(|known| known.is(segment, hash)),
            Self::Many(many) => many.find(hash, |known| known.is(segment, hash)),
        };
        found.map(|known| &known.node)
    }

    fn get_mut(&mut self, segment: &str, hash: u64) -> Option<&mut Node> {
        let found = match self {
            Self::Few(few) => few.iter_mut().find(|known| known.is(segment, hash)),
            Self::Many(many) => many.find_mut(hash, |known| known.is(segment, hash)),
        };
        found.map(|known| &mut known.node)
    }

    fn get_or_insert(&mut self, segment: &str, hash: u64) -> &mut Node {
        if let Self::Few(few) = self
            && few.len() == FEW_LITERALS
            && !few.iter().any(|known| known.is(segment, hash))
        {
            let mut many = HashTable::with_capacity(FEW_LITERALS + 1);
            for known in few.drain(..) {
                many.insert_unique(known.hash, known, |known| known.hash);
            }
            *self = Self::Many(many);
        }
        let fresh = || Literal {
            hash,
            segment: segment.into(),
            node: Node::default(),
        };
        match self {
            Self::Few(few) => {
                let index = match few.iter().position(|known| known.is(segment, hash)) {
                    Some(index) => index,
                    None => {
                        few.reserve_exact(1);
                        few.push(fresh());
                        few.len() - 1
                    }
                };
                &mut few[index].node
            }
            Self::Many(many) => {
                &mut many
                    .entry(hash, |known| known.is(segment, hash), |known| known.hash)
                    .or_insert_with(fresh)
                    .into_mut()
                    .node
            }
        }
    }

    fn remove(&mut self, segment: &str, hash: u64) {
        match self {
            Self::Few(few) => {
                few.retain(|known| !known.is(segment, hash));
                few.shrink_to_fit();
            }
            Self::Many(many) => {
                if let Ok(entry) = many.find_entry(hash, |known| known.is(segment, hash)) {
                    entry.remove();
                }
                if many.len() <= FEW_LITERALS / 2 {
                    let mut few = Vec::with_capacity(many.len());
                    few.extend(many.drain());
                    *self = Self::Few(few);
                }
            }
        }
    }
}

impl Literal {
    fn is(&self, segment: &str, hash: u64) -> bool {
        self.hash == hash && &*self.segment == segment
    }
}

/// How far below a node a filter ends, and whether it ends with `>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reach {
    /// Segments below the node before the filter's end (or its `>`),
    /// capped at 63.
    depth: u8,
    tail: bool,
}

impl Reach {
    /// The reach of the rest of a filter, `segments`, from the node it
    /// starts at.
    fn of(segments: &[&str]) -> Self {
        let tail = segments.last() == Some(&">");
        let depth = segments.len() - usize::from(tail);
        Self {
            depth: u8::try_from(depth.min(63)).expect("capped at 63"),
            tail,
        }
    }
}

/// The bit for `remaining` segments in `ends` or `tails`.
fn depth_bit(remaining: usize) -> u64 {
    1 << remaining.min(63)
}

/// The bits of `tails` whose `>` still has at least one segment to match
/// when `remaining` segments are left.
fn tails_within(remaining: usize) -> u64 {
    if remaining >= 64 {
        u64::MAX
    } else {
        (1 << remaining) - 1
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }

    /// Whether any filter at or below this node can match a topic with
    /// `remaining` more segments from here.
    fn may_match(&self, remaining: usize) -> bool {
        self.ends & depth_bit(remaining) != 0 || self.tails & tails_within(remaining) != 0
    }

    fn add_reach(&mut self, reach: Reach) {
        match self.reaches.iter_mut().find(|(known, _)| *known == reach) {
            Some((_, count)) => *count += 1,
            None => self.reaches.push((reach, 1)),
        }
        self.refresh_masks();
    }

    fn remove_reach(&mut self, reach: Reach) {
        if let Some(index) = self.reaches.iter().position(|(known, _)| *known == reach) {
            self.reaches[index].1 -= 1;
            if self.reaches[index].1 == 0 {
                self.reaches.swap_remove(index);
            }
        }
        self.refresh_masks();
    }

    fn child(&self, segment: &str, hash: u64) -> Option<&Node> {
        self.literal.get(segment, hash)
    }

    fn refresh_masks(&mut self) {
        self.ends = 0;
        self.tails = 0;
        for (reach, _) in &self.reaches {
            let bit = depth_bit(usize::from(reach.depth));
            if reach.tail {
                self.tails |= bit;
            } else {
                self.ends |= bit;
            }
        }
    }
}

impl WildcardIndex {
    pub(crate) fn new(limits: WildcardLimits) -> Self {
        Self {
            limits,
            cache: MatchCache::new(limits.cache_entries, limits.cache_bytes),
            ..Self::default()
        }
    }

    /// Number of wildcard subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `peer` under `filter`, unless the broker-wide or the per-subject
    /// cap is reached. The caller has checked that `peer` does not already
    /// hold `filter`.
    pub(crate) fn insert(
        &mut self,
        filter: &TopicFilter,
        peer: Arc<Peer>,
    ) -> Result<StaleMatches, WildcardRefusal> {
        if self.len >= self.limits.total {
            return Err(WildcardRefusal::Total {
                limit: self.limits.total,
            });
        }
        let held = self.per_subject.get(&peer.subject).copied().unwrap_or(0);
        if held >= self.limits.per_subject {
            return Err(WildcardRefusal::Subject {
                limit: self.limits.per_subject,
            });
        }
        let segments: Vec<&str> = filter.segments().collect();
        let mut node = &mut self.root;
        for (index, segment) in segments.iter().enumerate() {
            node.add_reach(Reach::of(&segments[index..]));
            node = match *segment {
                ">" => break,
                "*" => node.star.get_or_insert_with(Box::default),
                literal => {
                    let hash = self.hasher.hash_one(literal);
                    node.literal.get_or_insert(literal, hash)
                }
            };
        }
        if segments.last() == Some(&">") {
            node.tail.push(Arc::clone(&peer));
        } else {
            node.add_reach(Reach::of(&[]));
            node.here.push(Arc::clone(&peer));
        }
        self.len += 1;
        *self.per_subject.entry(peer.subject.clone()).or_default() += 1;
        Ok(self.cache.take())
    }

    /// Removes `peer` from `filter`; `None` if it was not there.
    pub(crate) fn remove(&mut self, filter: &TopicFilter, peer: ConnId) -> Option<StaleMatches> {
        let segments: Vec<&str> = filter.segments().collect();
        let removed = Self::remove_at(&mut self.root, &segments, peer, &self.hasher)?;
        self.len -= 1;
        if let Some(held) = self.per_subject.get_mut(&removed.subject) {
            *held -= 1;
            if *held == 0 {
                self.per_subject.remove(&removed.subject);
            }
        }
        Some(self.cache.take())
    }

    fn remove_at(
        node: &mut Node,
        segments: &[&str],
        peer: ConnId,
        hasher: &RandomState,
    ) -> Option<Arc<Peer>> {
        let take = |list: &mut Vec<Arc<Peer>>| {
            let index = list.iter().position(|entry| entry.id == peer)?;
            Some(list.swap_remove(index))
        };
        let removed = match segments.split_first() {
            None => take(&mut node.here),
            Some((&">", _)) => take(&mut node.tail),
            Some((&"*", rest)) => {
                let child = node.star.as_deref_mut()?;
                let removed = Self::remove_at(child, rest, peer, hasher);
                if child.is_empty() {
                    node.star = None;
                }
                removed
            }
            Some((literal, rest)) => {
                let hash = hasher.hash_one(*literal);
                let child = node.literal.get_mut(literal, hash)?;
                let removed = Self::remove_at(child, rest, peer, hasher);
                if child.is_empty() {
                    node.literal.remove(literal, hash);
                }
                removed
            }
        }?;
        node.remove_reach(Reach::of(segments));
        Some(removed)
    }

    /// Calls `visit` for every peer whose wildcard filter matches `topic`,
    /// each once (a connection's filters never overlap).
    pub(crate) fn for_each_match(&self, topic: &TopicName, mut visit: impl FnMut(&Arc<Peer>)) {
        if self.len == 0 {
            return;
        }
        if let Some(peers) = self.cache.get(topic.as_str()) {
            peers.iter().for_each(visit);
            return;
        }
        // Topics have few segments: keep them, hashed, on the stack.
        let mut segments = [("", 0); 16];
        let mut count = 0;
        let mut overflow = Vec::new();
        for segment in topic.segments() {
            let segment = (segment, self.hasher.hash_one(segment));
            if count < segments.len() {
                segments[count] = segment;
                count += 1;
            } else {
                if overflow.is_empty() {
                    overflow.extend_from_slice(&segments);
                }
                overflow.push(segment);
            }
        }
        let segments = if overflow.is_empty() {
            &segments[..count]
        } else {
            &overflow[..]
        };
        if !self.root.may_match(segments.len()) {
            self.cache.insert(topic.as_str(), Arc::from(Vec::new()));
            return;
        }
        if !self.cache.enabled() {
            Self::visit_at(&self.root, segments, &mut visit);
            return;
        }
        let mut found = Vec::new();
        Self::visit_at(&self.root, segments, &mut |peer| {
            found.push(Arc::clone(peer));
        });
        let peers: Arc<[Arc<Peer>]> = Arc::from(found);
        peers.iter().for_each(visit);
        self.cache.insert(topic.as_str(), peers);
    }

    /// Visits the matches below `node` for the rest of the topic,
    /// `segments` (each with its hash). Only called for nodes that
    /// [`Node::may_match`] it.
    fn visit_at(node: &Node, segments: &[(&str, u64)], visit: &mut impl FnMut(&Arc<Peer>)) {
        match segments.split_first() {
            None => node.here.iter().for_each(&mut *visit),
            Some(((segment, hash), rest)) => {
                node.tail.iter().for_each(&mut *visit);
                let remaining = rest.len();
                if let Some(child) = node.child(segment, *hash)
                    && child.may_match(remaining)
                {
                    Self::visit_at(child, rest, visit);
                }
                if let Some(child) = node.star.as_deref()
                    && child.may_match(remaining)
                {
                    Self::visit_at(child, rest, visit);
                }
            }
        }
    }

    /// Topics with a cached match result, and the bytes accounted for them.
    #[cfg(test)]
    fn cache_usage(&self) -> (usize, usize) {
        let map = self.cache.lock();
        (map.entries.len(), map.bytes)
    }
}

/// Match results by topic. Every entry reflects the index as it is: the
/// index empties the cache on each change, under its write lock, while
/// lookups and fills happen under its read lock.
#[derive(Debug, Default)]
struct MatchCache {
    max_entries: usize,
    max_bytes: usize,
    map: Mutex<CacheMap>,
}

#[derive(Debug, Default)]
struct CacheMap {
    entries: HashMap<Box<str>, CachedMatch>,
    /// Sum of the entries' [`entry_cost`].
    bytes: usize,
}

#[derive(Debug)]
struct CachedMatch {
    peers: Arc<[Arc<Peer>]>,
    /// Looked up since the last sweep: such entries survive the next one.
    used: bool,
}

/// The bytes an entry is accounted for: its key, its result and the map's
/// per-entry overhead.
fn entry_cost(topic: &str, matches: usize) -> usize {
    // The map slot, the result's reference counts, and its pointers.
    size_of::<(Box<str>, CachedMatch)>()
        + 2 * size_of::<usize>()
        + topic.len()
        + matches * size_of::<Arc<Peer>>()
}

impl MatchCache {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
            map: Mutex::new(CacheMap::default()),
        }
    }

    fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.map
            .lock()
            .expect("no code panics while holding the match cache")
    }

    fn get(&self, topic: &str) -> Option<Arc<[Arc<Peer>]>> {
        if !self.enabled() {
            return None;
        }
        let mut map = self.lock();
        let entry = map.entries.get_mut(topic)?;
        entry.used = true;
        Some(Arc::clone(&entry.peers))
    }

    fn insert(&self, topic: &str, peers: Arc<[Arc<Peer>]>) {
        if !self.enabled() {
            return;
        }
        let cost = entry_cost(topic, peers.len());
        // One entry may not take more than a quarter of the budget: a topic
        // matching a huge fan-out is walked each time instead.
        if cost > self.max_bytes / 4 {
            return;
        }
        let mut map = self.lock();
        if map.entries.contains_key(topic) {
            // Another publisher to the same topic filled it meanwhile.
            return;
        }
        if map.entries.len() >= self.max_entries || map.bytes + cost > self.max_bytes {
            map.sweep(self.max_entries / 4 * 3, self.max_bytes / 4 * 3);
        }
        map.bytes += cost;
        map.entries
            .insert(topic.into(), CachedMatch { peers, used: false });
    }

    /// Empties the cache; the old entries are returned to be freed later.
    fn take(&mut self) -> StaleMatches {
        let map = self
            .map
            .get_mut()
            .expect("no code panics while holding the match cache");
        StaleMatches(std::mem::take(map))
    }
}

impl CacheMap {
    /// Drops entries until at most `entries` and `bytes` are left: first
    /// those not used since the last sweep, then any. Every sweep frees at
    /// least a quarter of the budget, so sweeps cost O(1) per insert.
    fn sweep(&mut self, entries: usize, bytes: usize) {
        let mut kept_bytes = 0;
        self.entries.retain(|topic, entry| {
            let keep = std::mem::take(&mut entry.used);
            if keep {
                kept_bytes += entry_cost(topic, entry.peers.len());
            }
            keep
        });
        self.bytes = kept_bytes;
        if self.entries.len() > entries || self.bytes > bytes {
            let mut count = 0;
            let mut kept_bytes = 0;
            self.entries.retain(|topic, entry| {
                let cost = entry_cost(topic, entry.peers.len());
                let keep = count < entries && kept_bytes + cost <= bytes;
                if keep {
                    count += 1;
                    kept_bytes += cost;
                }
                keep
            });
            self.bytes = kept_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_of(id: u64, subject: &str) -> Arc<Peer> {
        let peer = Peer::new(
            ConnId(id),
            subject.into(),
            "127.0.0.1:1".parse().expect("address"),
            None,
            4,
            4096,
        );
        Arc::new(peer)
    }

    fn peer(id: u64) -> Arc<Peer> {
        peer_of(id, "t")
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::parse(text, 255).expect("filter")
    }

    fn matches(index: &WildcardIndex, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        index.for_each_match(&TopicName::parse(topic, 255).expect("topic"), |peer| {
            ids.push(peer.id.0);
        });
        ids.sort_unstable();
        ids
    }

    fn unlimited() -> WildcardLimits {
        WildcardLimits {
            per_subject: usize::MAX,
            total: usize::MAX,
            ..WildcardLimits::default()
        }
    }

    fn add(index: &mut WildcardIndex, text: &str, peer: Arc<Peer>) {
        let _ = index.insert(&filter(text), peer).expect("under the caps");
    }

    #[test]
    fn matches_follow_filter_semantics_and_removal_prunes() {
        for limits in [
            unlimited(),
            WildcardLimits {
                cache_entries: 0,
                ..unlimited()
            },
        ] {
            let mut index = WildcardIndex::new(limits);
            add(&mut index, "a.*", peer(1));
            add(&mut index, "a.>", peer(2));
            add(&mut index, "*.b.c", peer(3));
            add(&mut index, ">", peer(4));
            assert_eq!(matches(&index, "a.b"), vec![1, 2, 4]);
            assert_eq!(matches(&index, "a.b.c"), vec![2, 3, 4]);
            assert_eq!(matches(&index, "a"), vec![4]);
            assert_eq!(matches(&index, "x.b.c"), vec![3, 4]);
            assert!(index.remove(&filter("a.*"), ConnId(1)).is_some());
            assert!(index.remove(&filter("a.*"), ConnId(1)).is_none());
            assert_eq!(matches(&index, "a.b"), vec![2, 4]);
            for (f, id) in [("a.>", 2), ("*.b.c", 3), (">", 4)] {
                assert!(index.remove(&filter(f), ConnId(id)).is_some());
            }
            assert_eq!(index.len(), 0);
            assert!(index.root.is_empty());
            assert_eq!((index.root.ends, index.root.tails), (0, 0));
            assert!(index.per_subject.is_empty());
        }
    }

    #[test]
    fn the_index_agrees_with_filter_matching_on_every_topic() {
        // Every filter over segments {a, b, *} (and a trailing `>`) up to
        // four segments, against every topic over {a, b, c} up to five: the
        // pruned walk and the cache must give exactly what
        // `TopicFilter::matches` says, before and after removals.
        let mut filters = vec![String::new()];
        let mut all = Vec::new();
        for _ in 0..4 {
            let mut longer = Vec::new();
            for prefix in &filters {
                for segment in ["a", "b", "*"] {
                    let text = if prefix.is_empty() {
                        segment.to_owned()
                    } else {
                        format!("{prefix}.{segment}")
                    };
                    longer.push(text);
                }
            }
            for text in &longer {
                all.push(text.clone());
                all.push(format!("{text}.>"));
            }
            filters = longer;
        }
        all.push(">".into());
        let filters: Vec<TopicFilter> = all
            .iter()
            .map(|text| filter(text))
            .filter(|filter| !filter.is_exact())
            .collect();
        let mut topics = vec![String::new()];
        let mut every_topic = Vec::new();
        for _ in 0..5 {
            let mut longer = Vec::new();
            for prefix in &topics {
                for segment in ["a", "b", "c"] {
                    longer.push(if prefix.is_empty() {
                        segment.to_owned()
                    } else {
                        format!("{prefix}.{segment}")
                    });
                }
            }
            every_topic.extend(longer.iter().cloned());
            topics = longer;
        }
        let mut index = WildcardIndex::new(unlimited());
        for (id, filter) in filters.iter().enumerate() {
            let _ = index.insert(filter, peer(id as u64)).expect("unlimited");
        }
        let check = |index: &WildcardIndex, live: &dyn Fn(usize) -> bool| {
            for topic in &every_topic {
                let name = TopicName::parse(topic, 255).expect("topic");
                let expected: Vec<u64> = filters
                    .iter()
                    .enumerate()
                    .filter(|(id, filter)| live(*id) && filter.matches(&name))
                    .map(|(id, _)| id as u64)
                    .collect();
                // Twice: the walk, then the cache.
                assert_eq!(matches(index, topic), expected, "{topic}");
                assert_eq!(matches(index, topic), expected, "{topic} (cached)");
            }
        };
        check(&index, &|_| true);
        for (id, filter) in filters.iter().enumerate() {
            if id % 3 == 0 {
                assert!(index.remove(filter, ConnId(id as u64)).is_some());
            }
        }
        check(&index, &|id| id % 3 != 0);
    }

    #[test]
    fn nodes_with_many_literal_children_switch_to_a_table_and_back() {
        let mut index = WildcardIndex::new(unlimited());
        let is_many = |index: &WildcardIndex| matches!(index.root.literal, Literals::Many(_));
        for n in 0..20 {
            add(&mut index, &format!("k{n}.*"), peer(n));
            assert_eq!(is_many(&index), n >= FEW_LITERALS as u64, "{n}");
        }
        for n in 0..20 {
            assert_eq!(matches(&index, &format!("k{n}.x")), vec![n]);
        }
        assert_eq!(matches(&index, "k20.x"), Vec::<u64>::new());
        // Removing all but a few goes back to a vector; every match holds.
        for n in (0..20).filter(|n| n % 5 != 0) {
            assert!(
                index
                    .remove(&filter(&format!("k{n}.*")), ConnId(n))
                    .is_some()
            );
        }
        assert!(!is_many(&index));
        for n in 0..20 {
            let expected = if n % 5 == 0 { vec![n] } else { Vec::new() };
            assert_eq!(matches(&index, &format!("k{n}.x")), expected, "{n}");
        }
        for n in [0, 5, 10, 15] {
            assert!(
                index
                    .remove(&filter(&format!("k{n}.*")), ConnId(n))
                    .is_some()
            );
        }
        assert!(index.root.is_empty());
    }

    #[test]
    fn the_cache_is_emptied_by_inserts_and_removals() {
        let mut index = WildcardIndex::new(unlimited());
        add(&mut index, "a.*", peer(1));
        assert_eq!(matches(&index, "a.b"), vec![1]);
        assert_eq!(index.cache_usage().0, 1);
        add(&mut index, "*.b", peer(2));
        assert_eq!(index.cache_usage().0, 0);
        assert_eq!(matches(&index, "a.b"), vec![1, 2]);
        let _ = index.remove(&filter("a.*"), ConnId(1)).expect("held");
        assert_eq!(index.cache_usage().0, 0);
        assert_eq!(matches(&index, "a.b"), vec![2]);
    }

    #[test]
    fn caps_refuse_past_the_subject_and_broker_limits_and_free_on_removal() {
        let mut index = WildcardIndex::new(WildcardLimits {
            per_subject: 2,
            total: 3,
            ..WildcardLimits::default()
        });
        add(&mut index, "a.*", peer_of(1, "alice"));
        add(&mut index, "b.*", peer_of(2, "alice"));
        assert_eq!(
            index
                .insert(&filter("c.*"), peer_of(3, "alice"))
                .map(|_| ())
                .expect_err("third of alice's"),
            WildcardRefusal::Subject { limit: 2 }
        );
        add(&mut index, "c.*", peer_of(4, "bob"));
        assert_eq!(
            index
                .insert(&filter("d.*"), peer_of(5, "carol"))
                .map(|_| ())
                .expect_err("fourth in the broker"),
            WildcardRefusal::Total { limit: 3 }
        );
        let _ = index.remove(&filter("a.*"), ConnId(1)).expect("held");
        add(&mut index, "c.*", peer_of(3, "alice"));
        assert_eq!(index.len(), 3);
        assert_eq!(index.per_subject.get("alice"), Some(&2));
    }

    #[test]
    fn distinct_topics_cannot_grow_the_cache_past_its_bounds() {
        // Bounded by entries (64 entries are ~6 KiB here), then by bytes.
        for (max_entries, max_bytes) in [(64, 64 * 1024), (4096, 2 * 1024)] {
            let mut index = WildcardIndex::new(WildcardLimits {
                cache_entries: max_entries,
                cache_bytes: max_bytes,
                ..unlimited()
            });
            add(&mut index, "flood.*.x", peer(1));
            let mut most = 0;
            for n in 0..10_000 {
                assert_eq!(matches(&index, &format!("flood.topic-number-{n}.x")), [1]);
                let (entries, bytes) = index.cache_usage();
                assert!(entries <= max_entries, "{entries} entries");
                assert!(bytes <= max_bytes, "{bytes} bytes");
                most = most.max(entries);
            }
            // It was used, not bypassed.
            assert!(most > 8, "at most {most} entries were cached");
        }
    }

    #[test]
    fn a_topic_in_steady_use_survives_a_flood_of_distinct_topics() {
        let mut index = WildcardIndex::new(WildcardLimits {
            cache_entries: 64,
            ..unlimited()
        });
        add(&mut index, "steady.*", peer(1));
        assert_eq!(matches(&index, "steady.one"), vec![1]);
        for n in 0..1_000 {
            let _ = matches(&index, &format!("flood.{n}"));
            // The steady publisher, once per 16 flood topics: more often
            // than sweeps come (after a sweep keeps only used entries, the
            // next is 63 inserts away), so it is always kept.
            if n % 16 == 0 {
                let cached = index.cache.get("steady.one");
                assert!(cached.is_some(), "evicted after {n} flood topics");
            }
        }
    }

    #[test]
    fn depth_pruning_skips_filters_that_cannot_reach_the_topic() {
        let mut index = WildcardIndex::new(unlimited());
        add(&mut index, "a.*.c.d", peer(1));
        add(&mut index, "a.b.>", peer(2));
        // The `a` node: a filter ending 3 below, a `>` 2 below.
        let a = index
            .root
            .child("a", index.hasher.hash_one("a"))
            .expect("a");
        assert_eq!((a.ends, a.tails), (1 << 3, 1 << 1));
        assert!(!a.may_match(1)); // `a.x`: `>` needs one more, `a.*.c.d` two
        assert!(a.may_match(2)); // `a.b.x` for `a.b.>`
        assert!(a.may_match(3));
        assert_eq!(matches(&index, "a.b"), Vec::<u64>::new());
        assert_eq!(matches(&index, "a.b.c.d"), vec![1, 2]);
        let _ = index.remove(&filter("a.b.>"), ConnId(2)).expect("held");
        let a = index
            .root
            .child("a", index.hasher.hash_one("a"))
            .expect("a");
        assert_eq!((a.ends, a.tails), (1 << 3, 0));
    }

    #[test]
    fn filter_shapes_past_the_limits_are_refused() {
        let limits = LimitsConfig {
            max_filter_wildcards: 2,
            max_wildcard_filter_segments: 4,
            ..LimitsConfig::default()
        };
        assert_eq!(shape_error(&filter("a.*.*.>"), &limits), None);
        let stars = shape_error(&filter("*.*.*"), &limits).expect("three stars");
        assert!(stars.contains("at most 2"), "{stars}");
        let long = shape_error(&filter("a.b.c.d.>"), &limits).expect("five segments");
        assert!(long.contains("at most 4"), "{long}");
    }
}
