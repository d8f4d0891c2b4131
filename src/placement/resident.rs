//! The resident set: which tasks keep compiled code at the edge, bounded by count and by
//! bytes of code. Making room evicts the coldest first. Pinned tasks (`placement: edge`)
//! are loaded at start, never evicted, and not counted here.

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

    /// Adds `name` with `bytes` of code, evicting the coldest (lowest `rate`) until it fits.
    pub fn admit(&mut self, name: &str, bytes: u64, rate: impl Fn(&str) -> f64) -> Admit {
        if bytes > self.max_bytes || self.max_count == 0 {
            return Admit::TooLarge;
        }
        self.remove(name);
        let mut evicted = Vec::new();
        while self.entries.len() + 1 > self.max_count || self.bytes() + bytes > self.max_bytes {
            let coldest = self
                .entries
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| rate(&a.name).total_cmp(&rate(&b.name)))
                .map(|(i, _)| i);
            match coldest {
                Some(i) => evicted.push(self.entries.swap_remove(i).name),
                None => break,
            }
        }
        self.entries.push(Entry {
            name: name.to_string(),
            bytes,
        });
        Admit::Admitted { evicted }
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
    fn readmitting_does_not_double_count() {
        let mut set = ResidentSet::new(2, 100);
        set.admit("a", 40, rates);
        set.admit("a", 40, rates);
        assert_eq!((set.len(), set.bytes()), (1, 40));
        assert!(set.remove("a") && set.is_empty());
    }
}
