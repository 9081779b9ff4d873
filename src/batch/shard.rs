//! Which slice of the job list this process takes: `--shard I/N`, else a
//! Slurm job array (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`,
//! `SLURM_ARRAY_TASK_COUNT`), else a Kubernetes Indexed Job
//! (`JOB_COMPLETION_INDEX` with `--shards N`), else everything.

/// Shard `index` of `count`: items k with k mod count == index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Self, String> {
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index}/{count}: the index must be below the count (0..{})",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }

    /// `I/N`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("--shard must be I/N with 0 <= I < N, got '{text}'");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Self::new(i, n).map_err(|e| format!("--shard {text}: {e}"))
    }

    pub fn owns(&self, item_index: usize) -> bool {
        item_index % self.count == self.index
    }

    /// The shard from the flags, then the environment (`env` looks a name up).
    pub fn resolve(
        shard: Option<&str>,
        shards: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        if let Some(s) = shard {
            return Self::parse(s);
        }
        let num = |name: &str| -> Result<Option<usize>, String> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}={v} is not a non-negative integer")),
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let count = match (shards, num("SLURM_ARRAY_TASK_COUNT")?) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => return Err(
                    "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT: pass --shards N"
                        .into(),
                ),
            };
            let index = id.checked_sub(min).ok_or_else(|| {
                format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
            })?;
            return Self::new(index, count).map_err(|e| {
                format!("from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (the array must be contiguous, step 1): {e}")
            });
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or(
                "JOB_COMPLETION_INDEX is set: pass --shards N (the Indexed Job's completions)",
            )?;
            return Self::new(index, count).map_err(|e| format!("from JOB_COMPLETION_INDEX: {e}"));
        }
        match shards {
            Some(1) | None => Ok(Self::ALL),
            Some(n) => Err(format!(
                "--shards {n} without --shard I/N, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX: which shard is this?"
            )),
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flags_then_slurm_then_kubernetes() {
        assert_eq!(Shard::parse("1/3"), Ok(Shard { index: 1, count: 3 }));
        let e = Shard::parse("3/2").unwrap_err();
        assert!(e.contains("3/2") && e.contains("below"), "{e}");
        assert!(Shard::parse("1").is_err() && Shard::parse("0/0").is_err());
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(
            Shard::resolve(None, None, env(&slurm)),
            Ok(Shard { index: 4, count: 8 })
        );
        assert_eq!(
            Shard::resolve(Some("0/2"), None, env(&slurm)),
            Ok(Shard { index: 0, count: 2 })
        );
        let k8s = [("JOB_COMPLETION_INDEX", "2")];
        assert_eq!(
            Shard::resolve(None, Some(4), env(&k8s)),
            Ok(Shard { index: 2, count: 4 })
        );
        assert!(Shard::resolve(None, None, env(&k8s))
            .unwrap_err()
            .contains("--shards"));
        assert!(Shard::resolve(None, Some(2), env(&[("JOB_COMPLETION_INDEX", "2")])).is_err());
        assert_eq!(Shard::resolve(None, None, env(&[])), Ok(Shard::ALL));
        assert!(Shard::ALL.owns(7));
        assert!(Shard { index: 1, count: 3 }.owns(4));
    }
}
