//! Priority levels with failover, as Envoy computes them.
//!
//! A level's health is `min(100, overprovisioning × healthy / total)` in
//! percent. Level 0 takes as much load as its health allows, the next level
//! the rest up to its own health, and so on; when the levels' health does
//! not add up to 100 the loads are scaled so they do. With the default
//! factor 1.4 a level keeps all traffic until less than ~71% of it is
//! healthy.

/// Per level `(healthy, total)` → load in percent per level (sums to 100,
/// or to 0 when nothing anywhere is healthy).
pub fn level_loads(levels: &[(u32, u32)], overprovisioning: f64) -> Vec<u32> {
    let health: Vec<u32> = levels
        .iter()
        .map(|&(healthy, total)| {
            if total == 0 {
                0
            } else {
                let h = overprovisioning * 100.0 * f64::from(healthy) / f64::from(total);
                h.clamp(0.0, 100.0) as u32
            }
        })
        .collect();
    let total_health: u32 = health.iter().sum::<u32>().min(100);
    let mut loads = vec![0u32; levels.len()];
    if total_health == 0 {
        return loads;
    }
    let mut remaining = 100u32;
    for (i, h) in health.iter().enumerate() {
        // Scale up when the levels together are short of 100% health.
        let want = (h * 100).div_ceil(total_health);
        let take = want.min(remaining);
        loads[i] = take;
        remaining -= take;
    }
    // Rounding leftovers go to the first level that has any health.
    if remaining > 0
        && let Some(i) = health.iter().position(|h| *h > 0)
    {
        loads[i] += remaining;
    }
    loads
}

/// Picks a level from `loads` for a point `x` in `0..100`.
pub fn level_for(loads: &[u32], x: u32) -> Option<usize> {
    let mut acc = 0u32;
    for (i, l) in loads.iter().enumerate() {
        acc += l;
        if x < acc {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_primary_takes_everything() {
        assert_eq!(level_loads(&[(4, 4), (2, 2)], 1.4), vec![100, 0]);
        // 3 of 4 healthy × 1.4 = 105% → still all of it.
        assert_eq!(level_loads(&[(3, 4), (2, 2)], 1.4), vec![100, 0]);
    }

    #[test]
    fn failover_in_proportion() {
        // 2 of 4 healthy: 70% stays, 30% fails over.
        assert_eq!(level_loads(&[(2, 4), (2, 2)], 1.4), vec![70, 30]);
        assert_eq!(level_loads(&[(0, 4), (2, 2)], 1.4), vec![0, 100]);
        // Factor 1: plain ratios.
        assert_eq!(level_loads(&[(1, 4), (2, 2)], 1.0), vec![25, 75]);
    }

    #[test]
    fn degraded_everywhere_scales_up() {
        // 1/4 × 1.4 = 35, 1/4 × 1.4 = 35 → 70 total → 50/50.
        assert_eq!(level_loads(&[(1, 4), (1, 4)], 1.4), vec![50, 50]);
        assert_eq!(level_loads(&[(0, 4), (0, 0)], 1.4), vec![0, 0]);
        let l = level_loads(&[(1, 3), (1, 7), (1, 9)], 1.4);
        assert_eq!(l.iter().sum::<u32>(), 100, "{l:?}");
    }

    #[test]
    fn choosing_a_level() {
        let loads = [70, 30];
        assert_eq!(level_for(&loads, 0), Some(0));
        assert_eq!(level_for(&loads, 69), Some(0));
        assert_eq!(level_for(&loads, 70), Some(1));
        assert_eq!(level_for(&loads, 99), Some(1));
        assert_eq!(level_for(&[0, 0], 5), None);
    }
}
