//! The resident set: which tasks keep compiled code at the edge, bounded by count and by
//! bytes of code. Making room evicts the coldest first, and only for a task hotter than
//! everything it would evict: when more tasks are hot than fit, the hottest stay and the
//! rest are forwarded, instead of the edge compiling and evicting in turn without end.
//! Pinned tasks (`placement: edge`) are loaded at start, never evicted, and not counted here.

/// One resident task.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    name: String,
    bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ResidentSet {
    max_count: usize,
    max_bytes: u64,
    entries: Vec<Entry>,
}

/// The answer to "make this task resident".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// In; these were evicted to make room.
    Admitted { evicted: Vec<String> },
    /// Room could only be made by evicting a task at least as hot: nothing changed.
    Colder,
    /// Larger than the whole set may hold.
    TooLarge,
}

impl ResidentSet {
    pub fn new(max_count: usize, max_bytes: u64) -> ResidentSet {
        ResidentSet {
            max_count,
            max_bytes,
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }

    /// Adds `name` with `bytes` of code, evicting the coldest (lowest `rate`) until it fits,
    /// unless that would evict a task at least as hot as `name`.
    pub fn admit(&mut self, name: &str, bytes: u64, rate: impl Fn(&str) -> f64) -> Admit {
        if bytes > self.max_bytes || self.max_count == 0 {
            return Admit::TooLarge;
        }
        self.remove(name);
        let newcomer = rate(name);
        let mut by_rate: Vec<(f64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (rate(&e.name), i))
            .collect();
        by_rate.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut count, mut total) = (self.entries.len(), self.bytes());
        let mut victims = Vec::new();
        for &(victim_rate, i) in &by_rate {
            if count < self.max_count && total + bytes <= self.max_bytes {
                break;
            }
            if victim_rate >= newcomer {
                return Admit::Colder;
            }
            victims.push(i);
            count -= 1;
            total -= self.entries[i].bytes;
        }
        // Highest index first, so each removal leaves the others' indices valid.
        victims.sort_unstable_by(|a, b| b.cmp(a));
        let evicted = victims
            .into_iter()
            .map(|i| self.entries.swap_remove(i).name)
            .collect();
        self.entries.push(Entry {
            name: name.to_string(),
            bytes,
        });
        Admit::Admitted { evicted }
    }

    /// The rate a task must beat to get in, if the set is full (by count, or by bytes for a
    /// task of the residents' average size); `None` while there is room.
    pub fn floor(&self, rate: impl Fn(&str) -> f64) -> Option<f64> {
        let (count, bytes) = (self.entries.len(), self.bytes());
        let average = bytes.checked_div(count as u64).unwrap_or(0);
        if count < self.max_count && bytes + average <= self.max_bytes {
            return None;
        }
        self.entries
            .iter()
            .map(|e| rate(&e.name))
            .min_by(|a, b| a.total_cmp(b))
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.name != name);
        self.entries.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(name: &str) -> f64 {
        match name {
            "a" => 1.0,
            "b" => 9.0,
            "c" => 5.0,
            _ => 100.0,
        }
    }

    #[test]
    fn bounded_by_count_coldest_out_first() {
        let mut set = ResidentSet::new(2, 1 << 30);
        assert_eq!(
            set.admit("a", 10, rates),
            Admit::Admitted { evicted: vec![] }
        );
        assert_eq!(
            set.admit("b", 10, rates),
            Admit::Admitted { evicted: vec![] }
        );
        assert_eq!(
            set.admit("c", 10, rates),
            Admit::Admitted {
                evicted: vec!["a".into()]
            }
        );
        assert!(set.contains("b") && set.contains("c") && !set.contains("a"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn bounded_by_bytes() {
        let mut set = ResidentSet::new(10, 100);
        set.admit("a", 40, rates);
        set.admit("b", 40, rates);
        set.admit("c", 30, rates);
        // 40 + 40 + 30 > 100: the coldest, a, goes.
        assert!(!set.contains("a") && set.bytes() == 70);
        assert_eq!(
            set.admit("x", 100, rates),
            Admit::Admitted {
                evicted: vec!["c".into(), "b".into()]
            }
        );
        assert_eq!(set.admit("huge", 101, rates), Admit::TooLarge);
        assert!(set.contains("x"));
    }

    #[test]
    fn a_colder_task_does_not_push_out_a_hotter_one() {
        let mut set = ResidentSet::new(2, 1 << 30);
        set.admit("b", 10, rates);
        set.admit("c", 10, rates);
        assert_eq!(set.floor(rates), Some(5.0));
        // a (1/s) would have to evict c (5/s): refused, nothing changes.
        assert_eq!(set.admit("a", 10, rates), Admit::Colder);
        assert!(set.contains("b") && set.contains("c") && !set.contains("a"));
        // Bytes too: making room for a 95-byte task of rate 5 would evict b (9/s).
        let mut set = ResidentSet::new(10, 100);
        set.admit("b", 50, rates);
        set.admit("a", 10, rates);
        assert_eq!(set.floor(rates), None);
        assert_eq!(set.admit("c", 95, rates), Admit::Colder);
        assert_eq!(set.bytes(), 60);
    }

    #[test]
    fn readmitting_does_not_double_count() {
        let mut set = ResidentSet::new(2, 100);
        set.admit("a", 40, rates);
        set.admit("a", 40, rates);
        assert_eq!((set.len(), set.bytes()), (1, 40));
        assert!(set.remove("a") && set.is_empty());
    }
}
