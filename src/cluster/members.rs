//! Who is in the cluster, and which member should own which region.
//!
//! Each process keeps a presence key `member.<id>` in the lease bucket, rewritten every
//! `lease_ttl / 6`; the bucket's `max_age` removes it `lease_ttl` after the process stops (a
//! crash or a pause), exactly like a lease. Every process reads the same live member set and
//! computes the same [`assign`]ment: rendezvous hashing (each region ranks the members by a
//! hash of region and member) with bounded loads (each member gets `floor` or `ceil` of
//! `regions / members`), so a process takes at most its fair share while others live, and
//! a member joining or leaving moves only the regions it gains or loses, not every region.

use std::hash::{Hash, Hasher};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::TryStreamExt;

/// Key prefix of the presence keys.
const PREFIX: &str = "member.";

/// A member id usable in a KV key: the characters JetStream allows in a key token
/// (letters, digits, `-`, `_`), anything else as `_`.
pub(crate) fn member_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Rewrites our presence key (its value is our gRPC address, for operators).
pub(crate) async fn announce(store: &kv::Store, id: &str, addr: &str) -> Result<(), String> {
    store
        .put(format!("{PREFIX}{id}"), Bytes::from(addr.to_owned()))
        .await
        .map(|_| ())
        .map_err(|e| format!("writing the presence key of {id}: {e}"))
}

/// Deletes our presence key (a graceful stop), so the others rebalance at once.
pub(crate) async fn leave(store: &kv::Store, id: &str) {
    if let Err(e) = store.delete(format!("{PREFIX}{id}")).await {
        tracing::warn!(member = id, error = %e, "could not delete the presence key");
    }
}

/// The ids of the live members, sorted.
pub(crate) async fn live(store: &kv::Store) -> Result<Vec<String>, String> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| format!("listing the cluster's members: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("listing the cluster's members: {e}"))?;
    let mut members: Vec<String> = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned))
        .collect();
    members.sort();
    Ok(members)
}

/// The preferred owner of each region (an index into `members`, `None` only when there are no
/// members): regions in order, each to its highest-ranked member not yet at the load bound.
/// Deterministic in its inputs, so every process computes the same answer.
pub(crate) fn assign(regions: &[&str], members: &[String]) -> Vec<Option<usize>> {
    if members.is_empty() {
        return vec![None; regions.len()];
    }
    // Every member gets `floor` or `floor + 1` regions; only `extra` of them the latter.
    let floor = regions.len() / members.len();
    let extra = regions.len() % members.len();
    let mut at_ceiling = 0;
    let mut load = vec![0usize; members.len()];
    regions
        .iter()
        .map(|region| {
            let mut ranked: Vec<usize> = (0..members.len()).collect();
            ranked.sort_by_key(|&m| std::cmp::Reverse(score(region, &members[m])));
            let chosen = ranked
                .into_iter()
                .find(|&m| load[m] < floor || (load[m] == floor && at_ceiling < extra));
            if let Some(m) = chosen {
                load[m] += 1;
                if load[m] > floor {
                    at_ceiling += 1;
                }
            }
            chosen
        })
        .collect()
}

/// A stable hash of (region, member): FxHash (no random seed, the same in every process)
/// finished with the splitmix64 mix so that close names spread.
fn score(region: &str, member: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    region.hash(&mut h);
    member.hash(&mut h);
    let mut z = h.finish().wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn every_member_gets_its_fair_share_and_no_more() {
        for members in 1..=5 {
            for regions in 1..=12 {
                let m = names(members, "127_0_0_1_5000-");
                let r = names(regions, "region-");
                let r: Vec<&str> = r.iter().map(String::as_str).collect();
                let a = assign(&r, &m);
                let mut load = vec![0; members];
                for owner in &a {
                    load[owner.expect("someone owns every region")] += 1;
                }
                let bound = regions.div_ceil(members);
                assert!(load.iter().all(|&l| l <= bound), "{load:?} over {bound}");
                if regions >= members {
                    assert!(load.iter().all(|&l| l >= 1), "{load:?}: an idle member");
                }
            }
        }
    }

    #[test]
    fn a_member_leaving_moves_only_a_few_regions() {
        let m = names(3, "p");
        let r = names(6, "r");
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        let before = assign(&r, &m);
        let after = assign(&r, &m[..2]);
        let moved = (0..r.len())
            .filter(|&i| before[i] != Some(2) && before[i] != after[i])
            .count();
        // The leaving member's two regions move; of the others at most one is displaced by
        // the load bound.
        assert!(moved <= 1, "{moved} regions of staying members moved");
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(assign(&["a", "b"], &[]), vec![None, None]);
    }
}
