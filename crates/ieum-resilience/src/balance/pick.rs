//! Choosing an endpoint among the available ones.

use std::cell::Cell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use http::Request;
use tokio::time::Instant;

use super::{Algorithm, Shared, Slot};

/// Endpoint indices, inline for up to 16 endpoints (no allocation per request).
pub(super) type Candidates = SmallVec<[usize; 16]>;

thread_local! {
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A uniform number in `0..n` (`n > 0`) from a per-thread xorshift64*: balancing needs
/// speed, not unpredictability.
fn random_below(n: u64) -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(r) * u128::from(n)) >> 64) as u64
    })
}

/// Indices of the endpoints that may take a request, narrowed to the caller's zone while
/// enough of it is available.
pub(super) fn candidates<S>(shared: &Shared<S>, eps: &[Slot<S>], now: Instant) -> Candidates {
    let avail: Candidates = (0..eps.len())
        .filter(|&i| shared.available(&eps[i], now).is_ok())
        .collect();
    let Some(zone) = &shared.config.local_zone else {
        return avail;
    };
    let in_zone = |s: &Slot<S>| s.ep.weight > 0 && s.ep.zone.as_deref() == Some(&**zone);
    let local_total = eps.iter().filter(|s| in_zone(s)).count();
    if local_total == 0 {
        return avail;
    }
    let local: Candidates = avail
        .iter()
        .copied()
        .filter(|&i| in_zone(&eps[i]))
        .collect();
    if !local.is_empty()
        && local.len() as f64 >= shared.config.zone_min_healthy * local_total as f64
    {
        local
    } else {
        avail
    }
}

/// Index into `candidates` of the endpoint to use; `candidates` is not empty.
pub(super) fn pick<S, B>(
    shared: &Shared<S>,
    eps: &[Slot<S>],
    candidates: &[usize],
    req: &Request<B>,
    now: Instant,
) -> usize {
    if candidates.len() == 1 {
        return 0;
    }
    let c = &shared.config;
    match &c.algorithm {
        Algorithm::RoundRobin => {
            let total: u64 = candidates
                .iter()
                .map(|&i| u64::from(eps[i].ep.weight))
                .sum();
            let n = shared.rr.fetch_add(1, Ordering::Relaxed) as u64;
            weighted_index(eps, candidates, n % total.max(1), None)
        }
        Algorithm::ConsistentHash(header) => match req.headers().get(header) {
            Some(value) => rendezvous(eps, candidates, value.as_bytes()),
            None => p2c(eps, candidates, |s| ewma_cost(shared, s, now)),
        },
        Algorithm::LeastRequest => p2c(eps, candidates, |s| {
            f64::from(s.stats.in_flight.load(Ordering::Relaxed) + 1)
        }),
        Algorithm::PeakEwma => p2c(eps, candidates, |s| ewma_cost(shared, s, now)),
    }
}

fn ewma_cost<S>(shared: &Shared<S>, slot: &Slot<S>, now: Instant) -> f64 {
    let estimate = slot
        .stats
        .ewma
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .estimate(now, shared.config.decay);
    estimate * f64::from(slot.stats.in_flight.load(Ordering::Relaxed) + 1)
}

/// The candidate at cumulative weight `r`, skipping `skip`.
fn weighted_index<S>(
    eps: &[Slot<S>],
    candidates: &[usize],
    mut r: u64,
    skip: Option<usize>,
) -> usize {
    for (k, &i) in candidates.iter().enumerate() {
        if Some(k) == skip {
            continue;
        }
        let w = u64::from(eps[i].ep.weight);
        if r < w {
            return k;
        }
        r -= w;
    }
    candidates.len() - 1 - usize::from(skip == Some(candidates.len() - 1))
}

/// Power of two choices: two distinct candidates sampled by weight, the cheaper wins (the
/// first sampled on a tie, so equal costs split traffic by weight).
fn p2c<S>(eps: &[Slot<S>], candidates: &[usize], cost: impl Fn(&Slot<S>) -> f64) -> usize {
    let total: u64 = candidates
        .iter()
        .map(|&i| u64::from(eps[i].ep.weight))
        .sum();
    if total == 0 {
        return 0;
    }
    let a = weighted_index(eps, candidates, random_below(total), None);
    let rest = total - u64::from(eps[candidates[a]].ep.weight);
    if rest == 0 {
        return a;
    }
    let b = weighted_index(eps, candidates, random_below(rest), Some(a));
    if cost(&eps[candidates[a]]) <= cost(&eps[candidates[b]]) {
        a
    } else {
        b
    }
}

/// Weighted rendezvous hashing: the highest `weight / -ln(hash(key, endpoint))` wins.
fn rendezvous<S>(eps: &[Slot<S>], candidates: &[usize], key: &[u8]) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (k, &i) in candidates.iter().enumerate() {
        let slot = &eps[i];
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        slot.ep.id.hash(&mut h);
        let unit = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(slot.ep.weight) / -unit.ln();
        if score > best.1 {
            best = (k, score);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::random_below;

    #[test]
    fn random_below_is_uniform_enough() {
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[random_below(5) as usize] += 1;
        }
        // 10,000 expected each; 5 standard deviations is about ±450.
        assert!(
            counts.iter().all(|c| (9_550..10_450).contains(c)),
            "{counts:?}"
        );
    }
}
