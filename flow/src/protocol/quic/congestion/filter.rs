//! Windowed extremum filters: the best (largest or smallest) value seen over a
//! sliding window of "time", where time is whatever monotonic counter the caller
//! uses (round trips for the bandwidth filter, microseconds for the RTT filter).
//!
//! Keeping every sample of the window would cost memory in proportion to the window;
//! instead the filter keeps three candidates: the best of the whole window, the best
//! of its later part and the best of its last part (the scheme of K. Nichols, also
//! used by Linux's `win_minmax`). When the best ages out, the next candidate, which is
//! the best of the samples that remain, takes its place. The answer is exact whenever
//! the best sample is younger than a quarter of the window and never worse than the
//! true best of the window otherwise; that is all a congestion model needs.

/// One remembered sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    time: u64,
    value: u64,
}

/// Which extremum a [`WindowedFilter`] tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extremum {
    /// The largest value (bottleneck bandwidth).
    Max,
    /// The smallest value (propagation delay).
    Min,
}

/// The best value over the last `window` units of time.
#[derive(Clone, Debug)]
pub(crate) struct WindowedFilter {
    kind: Extremum,
    window: u64,
    /// Best of the window, best of the later sub-window, best of the last one.
    candidates: Option<[Sample; 3]>,
}

impl WindowedFilter {
    /// An empty filter over `window` units of time.
    pub(crate) fn new(kind: Extremum, window: u64) -> Self {
        WindowedFilter {
            kind,
            window,
            candidates: None,
        }
    }

    /// Whether `a` is at least as good as `b`.
    fn at_least_as_good(&self, a: u64, b: u64) -> bool {
        match self.kind {
            Extremum::Max => a >= b,
            Extremum::Min => a <= b,
        }
    }

    /// The best value of the window, if any sample was taken.
    pub(crate) fn get(&self) -> Option<u64> {
        self.candidates.map(|c| c[0].value)
    }

    /// Forgets everything and starts again from one sample.
    pub(crate) fn reset(&mut self, time: u64, value: u64) {
        let s = Sample { time, value };
        self.candidates = Some([s; 3]);
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.candidates = None;
    }

    /// Adds a sample taken at `time` (which must not go backwards) and returns the
    /// best value of the window.
    pub(crate) fn update(&mut self, time: u64, value: u64) -> u64 {
        let new = Sample { time, value };
        let Some(mut c) = self.candidates else {
            self.reset(time, value);
            return value;
        };
        // A new overall best, or a window that has entirely passed, restarts.
        if self.at_least_as_good(value, c[0].value) || time.saturating_sub(c[2].time) > self.window
        {
            self.reset(time, value);
            return value;
        }
        if self.at_least_as_good(value, c[1].value) {
            c[1] = new;
            c[2] = new;
        } else if self.at_least_as_good(value, c[2].value) {
            c[2] = new;
        }

        // Age the candidates.
        let age = time.saturating_sub(c[0].time);
        if age > self.window {
            // The best expired: promote the others, possibly twice.
            c = [c[1], c[2], new];
            if time.saturating_sub(c[0].time) > self.window {
                c = [c[1], c[2], new];
            }
        } else if c[1] == c[0] && age > self.window / 4 {
            // A quarter of the window passed without a second-best: take one now.
            c[1] = new;
            c[2] = new;
        } else if c[2] == c[1] && age > self.window / 2 {
            // Half of it passed without a third-best.
            c[2] = new;
        }
        self.candidates = Some(c);
        c[0].value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_keeps_best_until_it_ages_out() {
        let mut f = WindowedFilter::new(Extremum::Max, 10);
        assert_eq!(f.get(), None);
        assert_eq!(f.update(0, 100), 100);
        for t in 1..=10 {
            assert_eq!(f.update(t, 50), 100, "t={t}");
        }
        // At t = 11 the sample of t = 0 is older than the window.
        assert_eq!(f.update(11, 40), 50);
        assert_eq!(f.update(12, 200), 200);
    }

    #[test]
    fn min_tracks_smallest_and_moves_on() {
        let mut f = WindowedFilter::new(Extremum::Min, 100);
        f.update(0, 30);
        f.update(10, 50);
        f.update(60, 40);
        assert_eq!(f.get(), Some(30));
        // 30 expires; the best of what remains (40 at t = 60) takes over.
        assert_eq!(f.update(120, 45), 40);
        // Then 40 expires too.
        assert_eq!(f.update(170, 48), 45);
    }

    #[test]
    fn never_reports_worse_than_window_best() {
        // A slowly decaying series: the max over the window is the oldest sample in
        // it; the filter may lag behind but must never report less than the truth.
        let mut f = WindowedFilter::new(Extremum::Max, 8);
        let values: Vec<u64> = (0..100).map(|t| 1000 - t * 5 + (t % 3) * 7).collect();
        for (t, &v) in values.iter().enumerate() {
            let got = f.update(t as u64, v);
            let lo = t.saturating_sub(8);
            let truth = *values[lo..=t].iter().max().unwrap_or(&0);
            assert!(got >= truth.min(v), "t={t} got={got} truth={truth}");
            // And never more than the best of twice the window.
            let lo2 = t.saturating_sub(16);
            let loose = *values[lo2..=t].iter().max().unwrap_or(&0);
            assert!(got <= loose, "t={t} got={got} loose={loose}");
        }
    }

    #[test]
    fn reset_and_clear() {
        let mut f = WindowedFilter::new(Extremum::Max, 10);
        f.update(0, 100);
        f.reset(5, 7);
        assert_eq!(f.get(), Some(7));
        f.clear();
        assert_eq!(f.get(), None);
    }
}
