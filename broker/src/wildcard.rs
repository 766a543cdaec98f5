//! The index of wildcard subscriptions: a trie over filter segments, so a
//! publish visits only the branches its topic can match.

use std::collections::HashMap;
use std::sync::Arc;

use sockeye_protocol::{TopicFilter, TopicName};

use crate::peer::{ConnId, Peer};

/// Wildcard filters and the peers subscribed to each.
#[derive(Debug, Default)]
pub(crate) struct WildcardIndex {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    /// Children by literal segment.
    literal: HashMap<String, Node>,
    /// The `*` child.
    star: Option<Box<Node>>,
    /// Peers whose filter ends here.
    here: Vec<Arc<Peer>>,
    /// Peers whose filter ends here with a trailing `>`.
    tail: Vec<Arc<Peer>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }
}

impl WildcardIndex {
    /// Number of wildcard subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `peer` under `filter`.
    pub(crate) fn insert(&mut self, filter: &TopicFilter, peer: Arc<Peer>) {
        let mut node = &mut self.root;
        for segment in filter.segments() {
            match segment {
                ">" => {
                    node.tail.push(peer);
                    self.len += 1;
                    return;
                }
                "*" => node = node.star.get_or_insert_with(Box::default),
                literal => node = node.literal.entry(literal.to_owned()).or_default(),
            }
        }
        node.here.push(peer);
        self.len += 1;
    }

    /// Removes `peer` from `filter`; returns whether it was there.
    pub(crate) fn remove(&mut self, filter: &TopicFilter, peer: ConnId) -> bool {
        let segments: Vec<&str> = filter.segments().collect();
        let removed = Self::remove_at(&mut self.root, &segments, peer);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node, segments: &[&str], peer: ConnId) -> bool {
        let take = |list: &mut Vec<Arc<Peer>>| {
            let before = list.len();
            list.retain(|entry| entry.id != peer);
            before != list.len()
        };
        match segments.split_first() {
            None => take(&mut node.here),
            Some((&">", _)) => take(&mut node.tail),
            Some((&"*", rest)) => {
                let Some(child) = node.star.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, peer);
                if child.is_empty() {
                    node.star = None;
                }
                removed
            }
            Some((literal, rest)) => {
                let Some(child) = node.literal.get_mut(*literal) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, peer);
                if child.is_empty() {
                    node.literal.remove(*literal);
                }
                removed
            }
        }
    }

    /// Calls `visit` for every peer whose wildcard filter matches `topic`.
    pub(crate) fn for_each_match(&self, topic: &TopicName, mut visit: impl FnMut(&Arc<Peer>)) {
        // Topics have few segments: keep them on the stack.
        let mut segments = [""; 16];
        let mut count = 0;
        let mut overflow = Vec::new();
        for segment in topic.segments() {
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
        Self::visit_at(&self.root, segments, &mut visit);
    }

    fn visit_at(node: &Node, segments: &[&str], visit: &mut impl FnMut(&Arc<Peer>)) {
        match segments.split_first() {
            None => node.here.iter().for_each(&mut *visit),
            Some((segment, rest)) => {
                node.tail.iter().for_each(&mut *visit);
                if let Some(child) = node.literal.get(*segment) {
                    Self::visit_at(child, rest, visit);
                }
                if let Some(child) = node.star.as_deref() {
                    Self::visit_at(child, rest, visit);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64) -> Arc<Peer> {
        let peer = Peer::new(
            ConnId(id),
            "t".into(),
            "127.0.0.1:1".parse().expect("address"),
            None,
            4,
            4096,
        );
        Arc::new(peer)
    }

    fn matches(index: &WildcardIndex, topic: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        index.for_each_match(&TopicName::parse(topic, 255).expect("topic"), |peer| {
            ids.push(peer.id.0);
        });
        ids.sort_unstable();
        ids
    }

    #[test]
    fn matches_follow_filter_semantics_and_removal_prunes() {
        let filter = |s| TopicFilter::parse(s, 255).expect("filter");
        let mut index = WildcardIndex::default();
        index.insert(&filter("a.*"), peer(1));
        index.insert(&filter("a.>"), peer(2));
        index.insert(&filter("*.b.c"), peer(3));
        index.insert(&filter(">"), peer(4));
        assert_eq!(matches(&index, "a.b"), vec![1, 2, 4]);
        assert_eq!(matches(&index, "a.b.c"), vec![2, 3, 4]);
        assert_eq!(matches(&index, "a"), vec![4]);
        assert_eq!(matches(&index, "x.b.c"), vec![3, 4]);
        assert!(index.remove(&filter("a.*"), ConnId(1)));
        assert!(!index.remove(&filter("a.*"), ConnId(1)));
        assert_eq!(matches(&index, "a.b"), vec![2, 4]);
        for (f, id) in [("a.>", 2), ("*.b.c", 3), (">", 4)] {
            assert!(index.remove(&filter(f), ConnId(id)));
        }
        assert_eq!(index.len(), 0);
        assert!(index.root.is_empty());
    }
}
