//! Partition assignors: which member of a consumer group reads which partitions.
//!
//! When a rebalance completes, the coordinator gives every member's subscription and the
//! partition count of each topic to one of Kafka's three strategies (`range`,
//! `roundrobin`, `sticky`; the members choose which when they join) and hands each member
//! its share. Spate computes the assignment on the broker rather than on the group
//! leader's client, so clients stay simple and every client library gets the same result.
//!
//! **Invariant: an assignor does no I/O, never panics, and is deterministic.** Members are
//! taken in member-id order whatever the input order, and every partition of every topic
//! some member subscribes to goes to exactly one member that subscribes to it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// The partitions each member reads: member id -> topic -> partitions, ascending. Every
/// member given to `assign` appears, with an empty map if it gets nothing; a topic
/// appears only with at least one partition.
pub type Assignment = BTreeMap<String, BTreeMap<String, Vec<u32>>>;

/// One member of the group and the topics it subscribes to.
#[derive(Debug, Clone, Copy)]
pub struct Subscription<'a> {
    pub member_id: &'a str,
    pub topics: &'a [String],
}

/// An assignment strategy, with Kafka's names and behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Per topic, the subscribers (by id) get contiguous ranges of partitions; the first
    /// `partitions % subscribers` get one more. Members that subscribe to the same topics
    /// get the same ranges of each, which suits joining co-partitioned topics, but the
    /// first members get more overall.
    Range,
    /// All partitions, by topic then partition, dealt in turn to the members (by id),
    /// skipping a member that does not subscribe to the partition's topic.
    RoundRobin,
    /// Balanced like round-robin, but members keep what they had before where they can, so
    /// a rebalance moves few partitions. See [`assign`] for the rule.
    Sticky,
}

impl Strategy {
    /// Every strategy, in the order a broker lists them.
    pub const ALL: [Strategy; 3] = [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky];

    /// The name members use for it on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "roundrobin",
            Strategy::Sticky => "sticky",
        }
    }

    /// The strategy with this exact name.
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.name() == name)
    }
}

/// Assigns the partitions of the subscribed topics to `members`.
///
/// `partitions` holds the partition count of each topic that exists: a subscribed topic
/// missing from it has no partitions. Subscriptions with the same member id are one member
/// subscribed to all their topics. `previous` is the group's last assignment; only
/// `Sticky` reads it, and it may name members that are gone and topics or partitions that
/// no longer exist.
///
/// `Sticky` first finds what each member may keep: a partition it held in `previous`, that
/// still exists and that it still subscribes to (one held by several members is claimed by
/// the first by id). Then:
/// - When the `n` members that subscribe to a topic with partitions all subscribe to the
///   same topics, each of them has a quota of `total / n` partitions, and the first
///   `total % n` by most claims (then by id) one more. A member keeps its claims, lowest
///   topic and partition first, up to its quota; every other partition goes to the
///   least-loaded member below its quota (ties by id). Every member ends with exactly its
///   quota, and none loses a partition unless it held more than its quota.
/// - Otherwise (best effort): a member keeps all its claims; every other partition goes,
///   those of topics with the fewest subscribers first, to the least-loaded subscriber
///   (ties by id); then partitions move one at a time from a member to a subscriber of
///   their topic with at least two fewer, those the member did not claim first, until no
///   such move is left (or after `BALANCE_PASSES_MAX` passes over the members).
///
/// Cost, besides reading the subscriptions: O(partitions x log members), except sticky
/// with mixed subscriptions, O(partitions x members) per balancing pass.
pub fn assign(
    strategy: Strategy,
    members: &[Subscription<'_>],
    partitions: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let layout = Layout::new(members, partitions);
    let owners = match strategy {
        Strategy::Range => range(&layout),
        Strategy::RoundRobin => round_robin(&layout),
        Strategy::Sticky => sticky(&layout, previous),
    };
    layout.assignment(&owners)
}

/// Most passes of the sticky assignor's balancing moves with mixed subscriptions: each
/// pass costs up to (partitions x members), and real groups settle in a few.
const BALANCE_PASSES_MAX: usize = 64;

/// No member: the owner of a partition not assigned yet.
const UNASSIGNED: usize = usize::MAX;

/// The assignment problem with names replaced by indexes. Members are numbered in id order,
/// topics in name order, and partition `p` of topic `t` is partition number
/// `topics[t].first + p` of the group.
struct Layout<'a> {
    /// Member ids, ascending and distinct.
    members: Vec<&'a str>,
    /// For each member, the topics (indexes into `topics`) it subscribes to, ascending.
    member_topics: Vec<Vec<usize>>,
    /// The topics that have partitions and at least one subscriber, by name.
    topics: Vec<Topic<'a>>,
    /// Partitions of all those topics.
    total: usize,
}

struct Topic<'a> {
    name: &'a str,
    partitions: u32,
    /// Group-wide number of partition 0.
    first: usize,
    /// Members (indexes) that subscribe to it, ascending; never empty.
    subscribers: Vec<usize>,
}

impl<'a> Layout<'a> {
    fn new(subscriptions: &[Subscription<'a>], partitions: &BTreeMap<String, u32>) -> Self {
        let mut sorted: Vec<&Subscription<'a>> = subscriptions.iter().collect();
        sorted.sort_by_key(|subscription| subscription.member_id);
        let mut members: Vec<&'a str> = Vec::with_capacity(sorted.len());
        // Topic name -> its partition count and subscribers; `None` for a topic with no
        // partitions. Hashed: a large group lists up to a million subscriptions.
        let mut subscribers: HashMap<&'a str, Option<(u32, Vec<usize>)>> = HashMap::new();
        for subscription in sorted {
            if members.last() != Some(&subscription.member_id) {
                members.push(subscription.member_id);
            }
            let member = members.len() - 1;
            for topic in subscription.topics {
                let entry = subscribers.entry(topic.as_str()).or_insert_with(|| {
                    let count = partitions.get(topic.as_str()).copied().unwrap_or(0);
                    (count > 0).then(|| (count, Vec::new()))
                });
                // Each member's topics are all seen before the next member's.
                if let Some((_, list)) = entry
                    && list.last() != Some(&member)
                {
                    list.push(member);
                }
            }
        }
        let mut subscribed: Vec<(&'a str, u32, Vec<usize>)> = subscribers
            .into_iter()
            .filter_map(|(name, entry)| entry.map(|(count, list)| (name, count, list)))
            .collect();
        subscribed.sort_unstable_by_key(|&(name, _, _)| name);
        let mut member_topics = vec![Vec::new(); members.len()];
        let mut topics = Vec::with_capacity(subscribed.len());
        let mut total = 0usize;
        for (index, (name, partitions, subscribers)) in subscribed.into_iter().enumerate() {
            for &member in &subscribers {
                member_topics[member].push(index);
            }
            topics.push(Topic {
                name,
                partitions,
                first: total,
                subscribers,
            });
            total += partitions as usize;
        }
        Layout {
            members,
            member_topics,
            topics,
            total,
        }
    }

    /// The index of the topic named `name`, if it has partitions and a subscriber.
    fn topic_index(&self, name: &str) -> Option<usize> {
        self.topics
            .binary_search_by(|topic| topic.name.cmp(name))
            .ok()
    }

    /// Topic index of each group-wide partition number.
    fn topic_of(&self) -> Vec<usize> {
        let mut topic_of = Vec::with_capacity(self.total);
        for (index, topic) in self.topics.iter().enumerate() {
            topic_of.extend(std::iter::repeat_n(index, topic.partitions as usize));
        }
        topic_of
    }

    /// The assignment that gives partition number `n` to member `owners[n]`.
    fn assignment(&self, owners: &[usize]) -> Assignment {
        let mut per_member: Vec<BTreeMap<String, Vec<u32>>> =
            vec![BTreeMap::new(); self.members.len()];
        let mut scratch: Vec<Vec<u32>> = vec![Vec::new(); self.members.len()];
        for topic in &self.topics {
            for partition in 0..topic.partitions {
                let owner = owners.get(topic.first + partition as usize);
                if let Some(list) = owner.and_then(|&owner| scratch.get_mut(owner)) {
                    list.push(partition);
                }
            }
            for &member in &topic.subscribers {
                let list = std::mem::take(&mut scratch[member]);
                if !list.is_empty() {
                    per_member[member].insert(topic.name.to_string(), list);
                }
            }
        }
        self.members
            .iter()
            .zip(per_member)
            .map(|(id, topics)| (id.to_string(), topics))
            .collect()
    }
}

fn range(layout: &Layout<'_>) -> Vec<usize> {
    let mut owners = vec![UNASSIGNED; layout.total];
    for topic in &layout.topics {
        let count = topic.partitions as usize;
        let subscribers = topic.subscribers.len().max(1);
        let (each, extra) = (count / subscribers, count % subscribers);
        let mut next = topic.first;
        for (position, &member) in topic.subscribers.iter().enumerate() {
            let len = each + usize::from(position < extra);
            owners[next..next + len].fill(member);
            next += len;
        }
    }
    owners
}

fn round_robin(layout: &Layout<'_>) -> Vec<usize> {
    let mut owners = vec![UNASSIGNED; layout.total];
    // The member whose turn it is (or the first subscriber after it).
    let mut turn = 0;
    for topic in &layout.topics {
        let subscribers = &topic.subscribers;
        for owner in &mut owners[topic.first..topic.first + topic.partitions as usize] {
            let at = subscribers.partition_point(|&member| member < turn);
            let Some(&member) = subscribers.get(at).or(subscribers.first()) else {
                break;
            };
            *owner = member;
            turn = member + 1;
        }
    }
    owners
}

fn sticky(layout: &Layout<'_>, previous: &Assignment) -> Vec<usize> {
    let members = layout.members.len();
    let mut owners = vec![UNASSIGNED; layout.total];
    if layout.total == 0 {
        return owners;
    }

    // What each member may keep, ascending; `claimant` is the reverse map.
    let mut claims: Vec<Vec<usize>> = vec![Vec::new(); members];
    let mut claimant = vec![UNASSIGNED; layout.total];
    for (member_id, topics) in previous {
        let Ok(member) = layout.members.binary_search(&member_id.as_str()) else {
            continue;
        };
        for (name, partitions) in topics {
            let Some(index) = layout.topic_index(name) else {
                continue;
            };
            if layout.member_topics[member].binary_search(&index).is_err() {
                continue;
            }
            let topic = &layout.topics[index];
            for &partition in partitions.iter().filter(|&&p| p < topic.partitions) {
                let number = topic.first + partition as usize;
                if claimant[number] == UNASSIGNED {
                    claimant[number] = member;
                    claims[member].push(number);
                }
            }
        }
    }
    for list in &mut claims {
        list.sort_unstable();
    }

    let mut load = vec![0usize; members];
    // Members with a subscribed partition: do they all subscribe to the same topics?
    let mut participants = layout.member_topics.iter().filter(|t| !t.is_empty());
    let first = participants.next();
    let identical = participants.all(|topics| Some(topics) == first);

    if identical {
        let quotas = quotas(layout, &claims);
        for (member, list) in claims.iter().enumerate() {
            for &number in list.iter().take(quotas[member]) {
                owners[number] = member;
                load[member] += 1;
            }
        }
        // Every topic's subscribers are the participants: fill those below their quota,
        // least loaded first, from a heap of (at quota, load, member).
        let mut queue: BinaryHeap<Reverse<(bool, usize, usize)>> = (0..members)
            .filter(|&member| !layout.member_topics[member].is_empty())
            .map(|member| Reverse((load[member] >= quotas[member], load[member], member)))
            .collect();
        for owner in owners.iter_mut().filter(|owner| **owner == UNASSIGNED) {
            let Some(Reverse((_, _, member))) = queue.pop() else {
                break;
            };
            *owner = member;
            load[member] += 1;
            queue.push(Reverse((
                load[member] >= quotas[member],
                load[member],
                member,
            )));
        }
        return owners;
    }

    for (member, list) in claims.iter().enumerate() {
        for &number in list {
            owners[number] = member;
            load[member] += 1;
        }
    }
    let topic_of = layout.topic_of();
    let mut unassigned: Vec<usize> = (0..layout.total)
        .filter(|&number| owners[number] == UNASSIGNED)
        .collect();
    unassigned.sort_by_key(|&number| (layout.topics[topic_of[number]].subscribers.len(), number));
    for number in unassigned {
        let chosen = layout.topics[topic_of[number]]
            .subscribers
            .iter()
            .copied()
            .min_by_key(|&member| (load[member], member));
        if let Some(member) = chosen {
            owners[number] = member;
            load[member] += 1;
        }
    }
    balance(layout, &topic_of, &claimant, &mut owners, &mut load);
    owners
}

/// The identical-subscriptions quota of each member: `total / participants`, plus one for
/// the first `total % participants` participants by most claims, then by id.
fn quotas(layout: &Layout<'_>, claims: &[Vec<usize>]) -> Vec<usize> {
    let participants: Vec<usize> = (0..layout.members.len())
        .filter(|&member| !layout.member_topics[member].is_empty())
        .collect();
    let mut quotas = vec![0; layout.members.len()];
    let count = participants.len().max(1);
    let (each, extra) = (layout.total / count, layout.total % count);
    for &member in &participants {
        quotas[member] = each;
    }
    let mut by_claims = participants;
    by_claims.sort_by_key(|&member| (Reverse(claims[member].len()), member));
    for member in by_claims.into_iter().take(extra) {
        quotas[member] += 1;
    }
    quotas
}

/// Moves partitions from members to subscribers of their topic that hold at least two
/// fewer, until no such move is left or `BALANCE_PASSES_MAX` passes. Each move lowers the
/// sum of the squared loads, so the loop ends.
fn balance(
    layout: &Layout<'_>,
    topic_of: &[usize],
    claimant: &[usize],
    owners: &mut [usize],
    load: &mut [usize],
) {
    let members = load.len();
    // `blocked[t] == stamp`: no subscriber of topic t can take from the current donor.
    let mut blocked = vec![0u64; layout.topics.len()];
    let mut stamp = 0u64;
    for _ in 0..BALANCE_PASSES_MAX {
        let (Some(&most), Some(&least)) = (load.iter().max(), load.iter().min()) else {
            return;
        };
        if most <= least + 1 {
            return;
        }
        let mut held: Vec<Vec<usize>> = vec![Vec::new(); members];
        for (number, &owner) in owners.iter().enumerate() {
            if let Some(list) = held.get_mut(owner) {
                list.push(number);
            }
        }
        let mut donors: Vec<usize> = (0..members).collect();
        donors.sort_by_key(|&member| (Reverse(load[member]), member));
        let mut moved = false;
        for donor in donors {
            stamp += 1;
            let mut candidates = std::mem::take(&mut held[donor]);
            candidates.sort_by_key(|&number| (claimant[number] == donor, Reverse(number)));
            for number in candidates {
                let topic = topic_of[number];
                if blocked[topic] == stamp {
                    continue;
                }
                let receiver = layout.topics[topic]
                    .subscribers
                    .iter()
                    .copied()
                    .min_by_key(|&member| (load[member], member != claimant[number], member));
                match receiver {
                    Some(receiver) if load[receiver] + 2 <= load[donor] => {
                        owners[number] = receiver;
                        load[donor] -= 1;
                        load[receiver] += 1;
                        moved = true;
                    }
                    _ => blocked[topic] = stamp,
                }
            }
        }
        if !moved {
            return;
        }
    }
}
