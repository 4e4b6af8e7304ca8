//! The partition assignors: worked examples of each strategy, the sticky assignor's moves
//! when a member leaves or joins, a group of Kafka's largest size, and properties over
//! random groups (every partition to exactly one subscriber, determinism, balance, and
//! what the sticky assignor keeps).

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;
use spate::group::assignor::{self, Assignment, Subscription};

use assignor::Strategy::{Range, RoundRobin, Sticky};

/// A group as test data: each member's id and the topics it subscribes to, in input order.
#[derive(Debug, Clone)]
struct Group {
    members: Vec<(String, Vec<String>)>,
}

impl Group {
    fn new(members: &[(&str, &[&str])]) -> Self {
        Group {
            members: members
                .iter()
                .map(|(id, topics)| (id.to_string(), strings(topics)))
                .collect(),
        }
    }

    /// `count` members `m0000`, `m0001`, ... all subscribed to `topics`.
    fn uniform(count: usize, topics: &[String]) -> Self {
        Group {
            members: (0..count)
                .map(|index| (format!("m{index:04}"), topics.to_vec()))
                .collect(),
        }
    }

    fn assign(
        &self,
        strategy: assignor::Strategy,
        partitions: &BTreeMap<String, u32>,
        previous: &Assignment,
    ) -> Assignment {
        let subscriptions: Vec<Subscription<'_>> = self
            .members
            .iter()
            .map(|(id, topics)| Subscription {
                member_id: id,
                topics,
            })
            .collect();
        assignor::assign(strategy, &subscriptions, partitions, previous)
    }

    fn without(&self, id: &str) -> Self {
        Group {
            members: self
                .members
                .iter()
                .filter(|(member, _)| member != id)
                .cloned()
                .collect(),
        }
    }

    fn with(&self, id: &str, topics: &[String]) -> Self {
        let mut group = self.clone();
        group.members.push((id.to_string(), topics.to_vec()));
        group
    }

    /// Each member id's topics (duplicate ids: all their topics).
    fn subscriptions(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut subscriptions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (id, topics) in &self.members {
            subscriptions
                .entry(id)
                .or_default()
                .extend(topics.iter().map(String::as_str));
        }
        subscriptions
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
    topics
        .iter()
        .map(|&(name, count)| (name.to_string(), count))
        .collect()
}

/// One member's share written out: `[(topic, partitions)]`.
type Share<'a> = &'a [(&'a str, &'a [u32])];

/// An assignment written out: `[(member, [(topic, partitions)])]`.
fn assignment(members: &[(&str, Share<'_>)]) -> Assignment {
    members
        .iter()
        .map(|(member, topics)| {
            let topics = topics
                .iter()
                .map(|(topic, partitions)| (topic.to_string(), partitions.to_vec()))
                .collect();
            (member.to_string(), topics)
        })
        .collect()
}

/// A member's (topic, partition) pairs.
fn held(assignment: &Assignment, member: &str) -> BTreeSet<(String, u32)> {
    assignment
        .get(member)
        .into_iter()
        .flatten()
        .flat_map(|(topic, partitions)| partitions.iter().map(|&p| (topic.clone(), p)))
        .collect()
}

fn load(assignment: &Assignment, member: &str) -> usize {
    assignment
        .get(member)
        .map_or(0, |topics| topics.values().map(Vec::len).sum())
}

/// Partitions whose owner differs between `before` and `after` (among those `before` had).
fn moves(before: &Assignment, after: &Assignment) -> usize {
    let owners = |assignment: &Assignment| -> BTreeMap<(String, u32), String> {
        assignment
            .keys()
            .flat_map(|member| {
                held(assignment, member)
                    .into_iter()
                    .map(|tp| (tp, member.clone()))
            })
            .collect()
    };
    let (before, after) = (owners(before), owners(after));
    before
        .iter()
        .filter(|(tp, member)| after.get(*tp) != Some(*member))
        .count()
}

/// Every member present; every partition of every subscribed topic that exists assigned
/// exactly once, to a member that subscribes to it; partition lists ascending, none empty.
fn check_valid(
    group: &Group,
    partitions: &BTreeMap<String, u32>,
    result: &Assignment,
) -> Result<(), String> {
    let subscriptions = group.subscriptions();
    let members: Vec<&str> = result.keys().map(String::as_str).collect();
    let expected: Vec<&str> = subscriptions.keys().copied().collect();
    if members != expected {
        return Err(format!("members {members:?}, expected {expected:?}"));
    }
    let mut owners: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    for (member, topics) in result {
        for (topic, assigned) in topics {
            if !subscriptions[member.as_str()].contains(topic.as_str()) {
                return Err(format!(
                    "{member} got {topic}, which it does not subscribe to"
                ));
            }
            let Some(&count) = partitions.get(topic) else {
                return Err(format!("{member} got {topic}, which does not exist"));
            };
            if assigned.is_empty() || !assigned.windows(2).all(|pair| pair[0] < pair[1]) {
                return Err(format!("{member}'s {topic} partitions {assigned:?}"));
            }
            for &partition in assigned {
                if partition >= count {
                    return Err(format!("{member} got {topic}-{partition} of {count}"));
                }
                if let Some(other) = owners.insert((topic, partition), member) {
                    return Err(format!("{topic}-{partition} went to {other} and {member}"));
                }
            }
        }
    }
    let subscribed: BTreeSet<&str> = subscriptions.values().flatten().copied().collect();
    for topic in subscribed {
        for partition in 0..partitions.get(topic).copied().unwrap_or(0) {
            if !owners.contains_key(&(topic, partition)) {
                return Err(format!("{topic}-{partition} went to nobody"));
            }
        }
    }
    Ok(())
}

/// What `sticky_takes_partitions_only_from_members_above_their_new_quota` checks of one
/// change to a group with identical subscriptions, from `before` to `after`.
fn check_stays(
    group: &Group,
    partitions: &BTreeMap<String, u32>,
    before: &Assignment,
    after: &Assignment,
) -> Result<(), String> {
    check_valid(group, partitions, after)?;
    let total: usize = after.keys().map(|member| load(after, member)).sum();
    let floor = total / after.len().max(1);
    let mut expected_moves = 0;
    for member in after.keys() {
        let (old, new) = (held(before, member), held(after, member));
        if new.len() != floor && new.len() != floor + 1 {
            return Err(format!("{member} got {} of {total}: {after:?}", new.len()));
        }
        if !old.is_subset(&new) {
            // It lost some: it had more than its quota, kept that many, and gained nothing.
            if !new.is_subset(&old) || old.len() <= new.len() {
                return Err(format!("{member} lost partitions: {before:?} -> {after:?}"));
            }
            expected_moves += old.len() - new.len();
        }
        for other in after.keys() {
            if old.len() > held(before, other).len() && new.len() < load(after, other) {
                return Err(format!(
                    "{member} held more than {other} but got less: {before:?} -> {after:?}"
                ));
            }
        }
    }
    // Besides those, only a leaver's partitions move.
    let gone: usize = before
        .keys()
        .filter(|member| !after.contains_key(*member))
        .map(|member| load(before, member))
        .sum();
    let moved = moves(before, after);
    if moved != expected_moves + gone {
        return Err(format!("{moved} moves: {before:?} -> {after:?}"));
    }
    Ok(())
}

fn spread(loads: impl IntoIterator<Item = usize>) -> usize {
    let loads: Vec<usize> = loads.into_iter().collect();
    let (min, max) = (loads.iter().min(), loads.iter().max());
    max.zip(min).map_or(0, |(max, min)| max - min)
}

// ---------------------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------------------

#[test]
fn strategies_have_kafkas_names() {
    for strategy in assignor::Strategy::ALL {
        assert_eq!(assignor::Strategy::parse(strategy.name()), Some(strategy));
    }
    let names: Vec<&str> = assignor::Strategy::ALL
        .map(assignor::Strategy::name)
        .to_vec();
    assert_eq!(names, ["range", "roundrobin", "sticky"]);
    assert_eq!(assignor::Strategy::parse("Range"), None);
    assert_eq!(assignor::Strategy::parse("cooperative-sticky"), None);
}

#[test]
fn range_gives_contiguous_ranges_and_the_remainder_to_the_first_members() {
    // Input order does not matter: members are taken by id.
    let group = Group::new(&[("c", &["t"]), ("a", &["t"]), ("b", &["t"])]);
    let result = group.assign(Range, &counts(&[("t", 6)]), &Assignment::new());
    let expected = assignment(&[
        ("a", &[("t", &[0, 1])]),
        ("b", &[("t", &[2, 3])]),
        ("c", &[("t", &[4, 5])]),
    ]);
    assert_eq!(result, expected);

    let result = group.assign(Range, &counts(&[("t", 7)]), &Assignment::new());
    let expected = assignment(&[
        ("a", &[("t", &[0, 1, 2])]),
        ("b", &[("t", &[3, 4])]),
        ("c", &[("t", &[5, 6])]),
    ]);
    assert_eq!(result, expected);

    // Per topic, so with two topics the first member gets the remainder of each.
    let group = Group::new(&[("a", &["t", "u"]), ("b", &["t", "u"])]);
    let result = group.assign(Range, &counts(&[("t", 3), ("u", 3)]), &Assignment::new());
    let expected = assignment(&[
        ("a", &[("t", &[0, 1]), ("u", &[0, 1])]),
        ("b", &[("t", &[2]), ("u", &[2])]),
    ]);
    assert_eq!(result, expected);
}

#[test]
fn round_robin_deals_partitions_across_topics_in_turn() {
    let group = Group::new(&[("c1", &["t0", "t1"]), ("c0", &["t0", "t1"])]);
    let result = group.assign(
        RoundRobin,
        &counts(&[("t0", 3), ("t1", 3)]),
        &Assignment::new(),
    );
    let expected = assignment(&[
        ("c0", &[("t0", &[0, 2]), ("t1", &[1])]),
        ("c1", &[("t0", &[1]), ("t1", &[0, 2])]),
    ]);
    assert_eq!(result, expected);

    // Kafka's documented example with mixed subscriptions: a member's turn passes to the
    // next one that subscribes to the partition's topic.
    let group = Group::new(&[
        ("c0", &["t0"]),
        ("c1", &["t0", "t1"]),
        ("c2", &["t0", "t1", "t2"]),
    ]);
    let partitions = counts(&[("t0", 1), ("t1", 2), ("t2", 3)]);
    let result = group.assign(RoundRobin, &partitions, &Assignment::new());
    let expected = assignment(&[
        ("c0", &[("t0", &[0])]),
        ("c1", &[("t1", &[0])]),
        ("c2", &[("t1", &[1]), ("t2", &[0, 1, 2])]),
    ]);
    assert_eq!(result, expected);
}

#[test]
fn a_member_subscribed_to_nothing_gets_an_empty_map() {
    let group = Group::new(&[("a", &["t"]), ("b", &[]), ("c", &["t"])]);
    let partitions = counts(&[("t", 4)]);
    for strategy in assignor::Strategy::ALL {
        let result = group.assign(strategy, &partitions, &Assignment::new());
        check_valid(&group, &partitions, &result).unwrap();
        assert_eq!(result["b"], BTreeMap::new(), "{strategy:?}");
        assert_eq!(load(&result, "a"), 2, "{strategy:?}");
        assert_eq!(load(&result, "c"), 2, "{strategy:?}");
    }
}

#[test]
fn unknown_topics_and_topics_without_partitions_assign_nothing() {
    let group = Group::new(&[("a", &["missing", "empty"]), ("b", &["missing"])]);
    let partitions = counts(&[("empty", 0), ("unsubscribed", 5)]);
    // Even a previous assignment naming them gives nothing.
    let previous = assignment(&[("a", &[("missing", &[0]), ("unsubscribed", &[1])])]);
    for strategy in assignor::Strategy::ALL {
        let result = group.assign(strategy, &partitions, &previous);
        let expected = assignment(&[("a", &[]), ("b", &[])]);
        assert_eq!(result, expected, "{strategy:?}");
    }
    for strategy in assignor::Strategy::ALL {
        let result = Group::new(&[]).assign(strategy, &partitions, &previous);
        assert_eq!(result, Assignment::new(), "{strategy:?}");
    }
}

#[test]
fn duplicate_member_ids_are_one_member_with_all_their_topics() {
    let group = Group::new(&[("a", &["t"]), ("b", &["t", "u"]), ("a", &["u"])]);
    let partitions = counts(&[("t", 2), ("u", 2)]);
    for strategy in assignor::Strategy::ALL {
        let result = group.assign(strategy, &partitions, &Assignment::new());
        check_valid(&group, &partitions, &result).unwrap();
        assert_eq!(result.len(), 2, "{strategy:?}");
        assert_eq!(
            (load(&result, "a"), load(&result, "b")),
            (2, 2),
            "{strategy:?}"
        );
    }
}

#[test]
fn sticky_splits_a_leavers_partitions_and_moves_nothing_else() {
    let group = Group::new(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"])]);
    let partitions = counts(&[("t", 6)]);
    // Fresh, each partition in turn goes to the least-loaded member, ties by id.
    let fresh = group.assign(Sticky, &partitions, &Assignment::new());
    let expected = assignment(&[
        ("a", &[("t", &[0, 3])]),
        ("b", &[("t", &[1, 4])]),
        ("c", &[("t", &[2, 5])]),
    ]);
    assert_eq!(fresh, expected);

    let previous = assignment(&[
        ("a", &[("t", &[0, 1])]),
        ("b", &[("t", &[2, 3])]),
        ("c", &[("t", &[4, 5])]),
    ]);
    let survivors = group.without("c");
    let after = survivors.assign(Sticky, &partitions, &previous);
    check_valid(&survivors, &partitions, &after).unwrap();
    assert!(held(&after, "a").is_superset(&held(&previous, "a")));
    assert!(held(&after, "b").is_superset(&held(&previous, "b")));
    let expected = assignment(&[("a", &[("t", &[0, 1, 4])]), ("b", &[("t", &[2, 3, 5])])]);
    assert_eq!(after, expected);
    assert_eq!(moves(&previous, &after), 2);

    // Range, in the same scenario, keeps nothing in place for b.
    let range = survivors.assign(Range, &partitions, &previous);
    assert_eq!(moves(&previous, &range), 3);
}

#[test]
fn sticky_gives_the_ceiling_quota_to_the_member_that_held_most() {
    let group = Group::new(&[("a", &["t"]), ("b", &["t"]), ("c", &["t"]), ("d", &["t"])]);
    let partitions = counts(&[("t", 7)]);
    let previous = assignment(&[
        ("a", &[("t", &[0])]),
        ("b", &[("t", &[1, 2])]),
        ("c", &[("t", &[3, 4])]),
        ("d", &[("t", &[5, 6])]),
    ]);
    // 7 partitions over 3 members: quotas of 2, and one of 3 for b (held 2, first by id of
    // those that held most). Least loaded first, a fills up to 2, but the last partition
    // goes to b, still below its quota, not to a, first by id.
    let result = group.without("d").assign(Sticky, &partitions, &previous);
    let expected = assignment(&[
        ("a", &[("t", &[0, 5])]),
        ("b", &[("t", &[1, 2, 6])]),
        ("c", &[("t", &[3, 4])]),
    ]);
    assert_eq!(result, expected);
}

#[test]
fn sticky_moves_only_the_joiners_share() {
    let partitions = counts(&[("t", 6)]);
    let pair = Group::new(&[("a", &["t"]), ("b", &["t"])]);
    let trio = pair.with("c", &strings(&["t"]));

    // From the range assignment of the pair (a: 0-2, b: 3-5), both strategies.
    let previous = pair.assign(Range, &partitions, &Assignment::new());
    let sticky = trio.assign(Sticky, &partitions, &previous);
    let range = trio.assign(Range, &partitions, &previous);
    check_valid(&trio, &partitions, &sticky).unwrap();
    let expected = assignment(&[
        ("a", &[("t", &[0, 1])]),
        ("b", &[("t", &[3, 4])]),
        ("c", &[("t", &[2, 5])]),
    ]);
    assert_eq!(sticky, expected);
    assert_eq!(moves(&previous, &sticky), 2);
    assert_eq!(moves(&previous, &range), 3);

    // From the sticky assignment of the pair.
    let previous = pair.assign(Sticky, &partitions, &Assignment::new());
    let sticky = trio.assign(Sticky, &partitions, &previous);
    check_valid(&trio, &partitions, &sticky).unwrap();
    assert_eq!(moves(&previous, &sticky), 2);
    for member in ["a", "b"] {
        assert!(held(&previous, member).is_superset(&held(&sticky, member)));
        assert_eq!(load(&sticky, member), 2);
    }
}

#[test]
fn sticky_ignores_claims_that_no_longer_hold_and_settles_conflicts_by_member_id() {
    let group = Group::new(&[("a", &["t"]), ("b", &["t", "u"])]);
    let partitions = counts(&[("t", 4), ("u", 2)]);
    let previous = assignment(&[
        // Gone member, unsubscribed topic, partition past the end, unknown topic.
        ("gone", &[("t", &[0, 1, 2, 3])]),
        ("a", &[("t", &[3, 1, 9]), ("u", &[0, 1]), ("x", &[0])]),
        // b claims t-1 too: a is first by id.
        ("b", &[("t", &[1, 2]), ("u", &[1])]),
    ]);
    let result = group.assign(Sticky, &partitions, &previous);
    check_valid(&group, &partitions, &result).unwrap();
    assert!(held(&result, "a").is_superset(&BTreeSet::from([("t".into(), 1), ("t".into(), 3)])));
    assert!(held(&result, "b").is_superset(&BTreeSet::from([("t".into(), 2), ("u".into(), 1)])));
    assert_eq!((load(&result, "a"), load(&result, "b")), (3, 3));
}

#[test]
fn sticky_rebalances_mixed_subscriptions() {
    // b held all of t while a was away; a subscribes to t alone, b also to u.
    let group = Group::new(&[("a", &["t"]), ("b", &["t", "u"])]);
    let partitions = counts(&[("t", 10), ("u", 10)]);
    let previous = assignment(&[("b", &[("t", &(0..10).collect::<Vec<_>>())])]);
    let result = group.assign(Sticky, &partitions, &previous);
    check_valid(&group, &partitions, &result).unwrap();
    assert_eq!((load(&result, "a"), load(&result, "b")), (10, 10));
    assert_eq!(result["a"].keys().collect::<Vec<_>>(), ["t"]);
    // Settled: assigning again moves nothing.
    assert_eq!(group.assign(Sticky, &partitions, &result), result);
}

/// Kafka's largest group (`group.max.size` is 1000 here too) on 10,000 partitions: every
/// strategy, fresh and after a member leaves, with identical and with mixed subscriptions.
#[test]
fn assignors_handle_a_thousand_members_on_ten_thousand_partitions() {
    let topics: Vec<String> = (0..10).map(|index| format!("topic-{index}")).collect();
    let partitions: BTreeMap<String, u32> = topics.iter().map(|t| (t.clone(), 1000)).collect();
    let uniform = Group::uniform(1000, &topics);
    let mut mixed = uniform.clone();
    for (index, (_, subscribed)) in mixed.members.iter_mut().enumerate() {
        subscribed.truncate(1 + index % 10);
    }
    for group in [uniform, mixed] {
        for strategy in assignor::Strategy::ALL {
            let first = group.assign(strategy, &partitions, &Assignment::new());
            check_valid(&group, &partitions, &first).unwrap();
            let smaller = group.without("m0500");
            let second = smaller.assign(strategy, &partitions, &first);
            check_valid(&smaller, &partitions, &second).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// Topic names members may subscribe to; the last never exists, nor does `t<n>` when a
/// case has `n` topics or fewer.
const TOPICS: [&str; 5] = ["t0", "t1", "t2", "t3", "unknown"];

/// A random group: 1 to 4 topics of 0 to 20 partitions, 1 to 12 members (ids `m00`...)
/// in random input order, each subscribed to a random subset of `TOPICS` (the same one for
/// all with `identical`), and a random previous assignment that may name gone members
/// (`m12`, `m13`), unsubscribed or unknown topics, partitions past the end, and the same
/// partition for several members.
#[derive(Debug, Clone)]
struct Case {
    partitions: BTreeMap<String, u32>,
    group: Group,
    previous: Assignment,
}

fn case(identical: bool) -> impl Strategy<Value = Case> {
    let members = (1..=12usize).prop_flat_map(move |count| {
        let order = Just((0..count).collect::<Vec<_>>()).prop_shuffle();
        let masks = if identical {
            (0u8..32).prop_map(move |mask| vec![mask; count]).boxed()
        } else {
            vec(0u8..32, count).boxed()
        };
        (order, masks)
    });
    let previous = vec((0usize..14, 0usize..5, 0u32..24), 0..40);
    (vec(0u32..=20, 1..=4), members, previous).prop_map(|(counts, (order, masks), previous)| {
        let partitions = counts
            .iter()
            .enumerate()
            .map(|(index, &count)| (TOPICS[index].to_string(), count))
            .collect();
        let members = order
            .into_iter()
            .map(|index| {
                let topics = (0..TOPICS.len())
                    .filter(|bit| masks[index] & (1 << bit) != 0)
                    .map(|bit| TOPICS[bit].to_string())
                    .collect();
                (format!("m{index:02}"), topics)
            })
            .collect();
        let mut assignment = Assignment::new();
        for (member, topic, partition) in previous {
            assignment
                .entry(format!("m{member:02}"))
                .or_default()
                .entry(TOPICS[topic].to_string())
                .or_default()
                .push(partition);
        }
        Case {
            partitions,
            group: Group { members },
            previous: assignment,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Keep failures reproducible from the printed case rather than a file beside the
        // sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every strategy assigns each subscribed partition exactly once, to a subscriber, names
    /// every member, and gives the same answer for any input order or repeated members.
    #[test]
    fn every_partition_goes_to_exactly_one_subscriber_whatever_the_input_order(
        case in case(false),
    ) {
        for strategy in assignor::Strategy::ALL {
            let result = case.group.assign(strategy, &case.partitions, &case.previous);
            check_valid(&case.group, &case.partitions, &result)
                .map_err(|error| TestCaseError::fail(format!("{strategy:?}: {error}")))?;
            let mut reordered = case.group.clone();
            reordered.members.reverse();
            let doubled = case.group.with("m00", &[]).with("m00", &[]);
            let mut twice = case.group.clone();
            twice.members.extend(case.group.members.iter().cloned());
            for other in [reordered, doubled, twice] {
                let again = other.assign(strategy, &case.partitions, &case.previous);
                prop_assert_eq!(&again, &result, "{:?} on {:?}", strategy, other);
            }
            if strategy == Sticky {
                // Settled: its own result as the previous assignment changes nothing.
                let again = case.group.assign(strategy, &case.partitions, &result);
                prop_assert_eq!(&again, &result);
            }
        }
    }

    /// With identical subscriptions, loads differ by at most one: per topic for range,
    /// overall for round-robin and sticky.
    #[test]
    fn identical_subscriptions_are_balanced(case in case(true)) {
        for strategy in assignor::Strategy::ALL {
            let result = case.group.assign(strategy, &case.partitions, &case.previous);
            check_valid(&case.group, &case.partitions, &result)
                .map_err(|error| TestCaseError::fail(format!("{strategy:?}: {error}")))?;
            if strategy == Range {
                for topic in case.partitions.keys() {
                    let loads = result
                        .values()
                        .map(|topics| topics.get(topic).map_or(0, Vec::len));
                    prop_assert!(spread(loads) <= 1, "{:?}: {} in {:?}", strategy, topic, result);
                }
            } else {
                let loads = result.keys().map(|member| load(&result, member));
                prop_assert!(spread(loads) <= 1, "{:?}: {:?}", strategy, result);
            }
        }
    }

    /// As members leave and join a group with identical subscriptions, sticky takes a
    /// partition from a member only to bring it down to its new quota, gives the ceiling
    /// quotas to those that held most, and moves nothing more than that.
    #[test]
    fn sticky_takes_partitions_only_from_members_above_their_new_quota(
        case in case(true),
        changes in vec((any::<bool>(), any::<prop::sample::Index>()), 1..=4),
    ) {
        let partitions = &case.partitions;
        let mut group = case.group.clone();
        let mut before = group.assign(Sticky, partitions, &case.previous);
        for (step, (join, pick)) in changes.into_iter().enumerate() {
            let count = group.members.len();
            group = if join || count == 1 {
                // `m03+0` sorts between `m03` and `m04`.
                let id = format!("m{:02}+{step}", pick.index(count + 1));
                let topics = group.members[0].1.clone();
                group.with(&id, &topics)
            } else {
                group.without(&group.members[pick.index(count)].0.clone())
            };
            let after = group.assign(Sticky, partitions, &before);
            check_stays(&group, partitions, &before, &after).map_err(TestCaseError::fail)?;
            before = after;
        }
    }
}
