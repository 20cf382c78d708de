//! The free-space index of one pool for one family: disjoint free intervals.
//!
//! ```text
//!   pool 203.0.113.0/24, held .1 .2 .7       live: {0→0, 3→6, 8→255}
//!   ├─■─■─□□□□─■─□□□ … □┤                    lowest() = first live start (buggy skipped)
//!   0 1 2 3  6 7 8    255                    take(x): split   give(x): merge neighbours
//! ```
//!
//! Cost per operation is O(log fragments), whatever the pool size (a /64 starts as one
//! interval) or the number of held addresses. With `avoidBuggyIPs`, an interval holding
//! only `.0`/`.255` addresses (at most two: `x.255–x+1.0`) is parked in `dead`, so
//! `lowest()` never scans past unusable fragments; buggy addresses are never enumerated.

use std::collections::BTreeMap;

/// Free addresses of one family of one pool, as inclusive numeric intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FreeSet {
    /// Intervals with at least one allocatable address: start → end.
    live: BTreeMap<u128, u128>,
    /// Intervals of only buggy addresses (kept for merging and stats, never picked).
    dead: BTreeMap<u128, u128>,
    /// IPv4 set of a pool with `avoidBuggyIPs`.
    avoid_buggy: bool,
    /// IPv4 set: count buggy addresses for stats.
    v4: bool,
    /// Free addresses (saturating; only `::/0` saturates).
    free: u128,
    /// Free `.0`/`.255` addresses (IPv4 only).
    free_buggy: u128,
}

impl FreeSet {
    /// The free set of `ranges` minus the sorted `held` values.
    pub fn new(ranges: &[(u128, u128)], held: &[u128], v4: bool, avoid_buggy: bool) -> Self {
        let mut set = FreeSet {
            avoid_buggy: avoid_buggy && v4,
            v4,
            ..Default::default()
        };
        let mut held = held.iter().copied().peekable();
        for &(s, e) in ranges {
            let mut cur = s;
            let mut open = true;
            while let Some(&h) = held.peek() {
                if h > e {
                    break;
                }
                held.next();
                if h < cur {
                    continue;
                }
                if h > cur {
                    set.insert(cur, h - 1);
                }
                if h == e {
                    open = false;
                    break;
                }
                cur = h + 1;
            }
            if open {
                set.insert(cur, e);
            }
        }
        set
    }

    /// Free addresses (for stats).
    pub fn free(&self) -> u128 {
        self.free
    }

    /// Free addresses that `lowest` may return (buggy ones excluded when avoided).
    pub fn available(&self) -> u128 {
        if self.avoid_buggy {
            self.free.saturating_sub(self.free_buggy)
        } else {
            self.free
        }
    }

    /// The lowest allocatable free address, in O(log fragments).
    pub fn lowest(&self) -> Option<u128> {
        let (&s, &e) = self.live.first_key_value()?;
        self.first_usable(s, e)
    }

    /// Whether `v` is free.
    pub fn is_free(&self, v: u128) -> bool {
        Self::find(&self.live, v).is_some() || Self::find(&self.dead, v).is_some()
    }

    /// Marks `v` used; false when it was not free.
    pub fn take(&mut self, v: u128) -> bool {
        let (map_is_live, s, e) = if let Some((s, e)) = Self::find(&self.live, v) {
            (true, s, e)
        } else if let Some((s, e)) = Self::find(&self.dead, v) {
            (false, s, e)
        } else {
            return false;
        };
        if map_is_live {
            self.live.remove(&s);
        } else {
            self.dead.remove(&s);
        }
        self.uncount(s, e);
        if s < v {
            self.insert(s, v - 1);
        }
        if v < e {
            self.insert(v + 1, e);
        }
        true
    }

    /// Marks `v` free again (it must belong to the pool and not be free), merging neighbours.
    pub fn give(&mut self, v: u128) {
        debug_assert!(!self.is_free(v), "giving back a free address");
        let (mut s, mut e) = (v, v);
        if let Some(left) = v.checked_sub(1) {
            for map in [&mut self.live, &mut self.dead] {
                if let Some((&ls, &le)) = map.range(..v).next_back()
                    && le == left
                {
                    map.remove(&ls);
                    s = ls;
                }
            }
        }
        if let Some(right) = v.checked_add(1) {
            for map in [&mut self.live, &mut self.dead] {
                if let Some(re) = map.remove(&right) {
                    e = re;
                }
            }
        }
        // Neighbours were counted before; uncount them, then count the merged interval once.
        if s < v {
            self.uncount(s, v - 1);
        }
        if v < e {
            self.uncount(v + 1, e);
        }
        self.insert(s, e);
    }

    /// Every free interval in order (live and dead), for tests and invariant checks.
    #[cfg(test)]
    pub fn intervals(&self) -> Vec<(u128, u128)> {
        let mut all: Vec<_> = self
            .live
            .iter()
            .chain(&self.dead)
            .map(|(&s, &e)| (s, e))
            .collect();
        all.sort();
        all
    }

    fn find(map: &BTreeMap<u128, u128>, v: u128) -> Option<(u128, u128)> {
        map.range(..=v)
            .next_back()
            .filter(|&(_, &e)| e >= v)
            .map(|(&s, &e)| (s, e))
    }

    fn first_usable(&self, s: u128, e: u128) -> Option<u128> {
        let x = if !self.avoid_buggy {
            s
        } else {
            match s & 0xff {
                0xff => s + 2, // x.255 → x+1.0 (buggy) → x+1.1
                0 => s + 1,
                _ => s,
            }
        };
        (x <= e).then_some(x)
    }

    fn insert(&mut self, s: u128, e: u128) {
        self.count(s, e);
        if self.first_usable(s, e).is_some() {
            self.live.insert(s, e);
        } else {
            self.dead.insert(s, e);
        }
    }

    fn count(&mut self, s: u128, e: u128) {
        self.free = self.free.saturating_add((e - s).saturating_add(1));
        if self.v4 {
            self.free_buggy += ferrolb_crds::addresses::buggy_v4_in(s as u32, e as u32);
        }
    }

    fn uncount(&mut self, s: u128, e: u128) {
        self.free = self.free.saturating_sub((e - s).saturating_add(1));
        if self.v4 {
            self.free_buggy -= ferrolb_crds::addresses::buggy_v4_in(s as u32, e as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Address `low` of the `block`-th run of 256: plain numbers, with the same `.0`/`.255`
    /// arithmetic as IPv4 (no allowed test range spans adjacent /24s, let alone a /8).
    fn v4(block: u32, low: u8) -> u128 {
        u128::from(block) * 256 + u128::from(low)
    }

    #[test]
    fn lowest_take_give_merge() {
        let mut f = FreeSet::new(&[(0, 9)], &[], false, false);
        assert_eq!(f.lowest(), Some(0));
        assert!(f.take(0) && f.take(1) && f.take(5));
        assert!(!f.take(5), "already taken");
        assert_eq!(f.intervals(), vec![(2, 4), (6, 9)]);
        assert_eq!(f.free(), 7);
        f.give(5);
        assert_eq!(f.intervals(), vec![(2, 9)]);
        f.give(0);
        assert_eq!(f.intervals(), vec![(0, 0), (2, 9)]);
        f.give(1);
        assert_eq!(f.intervals(), vec![(0, 9)]);
        assert_eq!(f.free(), 10);
    }

    #[test]
    fn built_minus_held() {
        let f = FreeSet::new(&[(0, 9), (20, 21)], &[0, 3, 4, 9, 20], false, false);
        assert_eq!(f.intervals(), vec![(1, 2), (5, 8), (21, 21)]);
        assert_eq!(f.free(), 7);
        let full = FreeSet::new(&[(5, 6)], &[5, 6], false, false);
        assert_eq!(full.lowest(), None);
        assert_eq!(full.free(), 0);
    }

    #[test]
    fn buggy_addresses_are_skipped_and_parked() {
        let (s, e) = (v4(0, 0), v4(2, 255));
        let mut f = FreeSet::new(&[(s, e)], &[], true, true);
        assert_eq!(f.lowest(), Some(v4(0, 1)));
        assert_eq!(f.free(), 768);
        assert_eq!(f.available(), 768 - 6);
        for d in 1..=254 {
            assert!(f.take(v4(0, d)));
        }
        assert_eq!(f.lowest(), Some(v4(1, 1)), "0.255 and 1.0 skipped");
        for d in 1..=254 {
            assert!(f.take(v4(1, d)));
        }
        // Two dead fragments ahead of the live one; lowest() does not walk them.
        assert_eq!(f.live.len(), 1);
        assert_eq!(f.dead.len(), 2, "0.0 and 0.255-1.0");
        assert_eq!(f.lowest(), Some(v4(2, 1)));
        f.give(v4(1, 7));
        assert_eq!(f.lowest(), Some(v4(1, 7)));
        f.give(v4(0, 254));
        assert_eq!(f.dead.len(), 1, "0.254 revived the 0.255-1.0 fragment");
        assert!(f.intervals().contains(&(v4(0, 254), v4(1, 0))));
        assert_eq!(f.available(), f.free() - 6);
        assert!(f.take(v4(0, 254)));
        assert_eq!(
            f.dead.len(),
            2,
            "and taking it back parks the fragment again"
        );
        // Without avoidance the same addresses are ordinary.
        let plain = FreeSet::new(&[(s, e)], &[], true, false);
        assert_eq!(plain.lowest(), Some(s));
        assert_eq!(plain.available(), 768);
    }

    #[test]
    fn a_v4_slash_8_avoiding_buggy_ips_allocates_lowest_first() {
        // The size of an IPv4 /8, counted and skipped arithmetically.
        let mut f = FreeSet::new(&[(v4(0, 0), v4(65_535, 255))], &[], true, true);
        assert_eq!(f.available(), (1 << 24) - 2 * 65536);
        let mut last = 0;
        for _ in 0..300 {
            last = f.lowest().unwrap();
            assert!(f.take(last));
        }
        assert_eq!(last, v4(1, 46), "254 in the first run of 256, then 46");
        assert_eq!(f.available(), (1 << 24) - 2 * 65536 - 300);
    }

    #[test]
    fn top_of_the_space_does_not_overflow() {
        let mut f = FreeSet::new(&[(u128::MAX - 1, u128::MAX)], &[], false, false);
        assert!(f.take(u128::MAX));
        f.give(u128::MAX);
        assert_eq!(f.intervals(), vec![(u128::MAX - 1, u128::MAX)]);
        let mut z = FreeSet::new(&[(0, 1)], &[], false, false);
        assert!(z.take(0));
        z.give(0);
        assert_eq!(z.intervals(), vec![(0, 1)]);
    }
}
