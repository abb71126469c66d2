//! The copy engine: NBD source → target, full or over an extent list, several
//! connections in parallel, holes skipped by block status, checkpointed so a restart
//! never recopies what is done.
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use osm_api::Extent;
use serde::{Deserialize, Serialize};

use super::handle::{Endpoint, Nbd, NbdError};
use super::target::{is_zero, AlignedBuf, Target, TargetError};

#[derive(Debug, Clone)]
pub struct CopySpec {
    pub source: Endpoint,
    pub target: PathBuf,
    /// `None`: the whole disk.
    pub extents: Option<Vec<Extent>>,
    pub target_is_zero: bool,
    /// The target must be an existing block device (migrations: never a file made in
    /// place of a vanished volume).
    pub device_only: bool,
    pub tuning: Tuning,
}

/// How the engine works; defaults come from the agent's `[copy]` configuration.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub connections: usize,
    /// Unit of checkpointing; chunks never span a multiple of this size.
    pub chunk_size: u64,
    /// Size of one NBD read.
    pub request_size: usize,
    /// Persist a checkpoint after this much new work, or after `checkpoint_interval`.
    pub checkpoint_bytes: u64,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot reach the source {endpoint}: {source}")]
    SourceUnreachable { endpoint: String, source: NbdError },
    #[error("reading the source failed: {0}")]
    SourceRead(NbdError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("extent {offset}+{length} lies beyond the end of the {size}-byte disk; the extent list does not belong to this disk")]
    ExtentBeyondEnd { offset: u64, length: u64, size: u64 },
    #[error(
        "the checkpoint was made for {have} chunks but this copy has {need}; the request changed, start a new job"
    )]
    CheckpointMismatch { have: usize, need: usize },
    #[error("saving the checkpoint failed: {0}")]
    Checkpoint(String),
    #[error("cancelled")]
    Cancelled,
}

/// What is durable on the target: chunk indices, as sorted half-open runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chunks: usize,
    pub done: Vec<(usize, usize)>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl Checkpoint {
    fn from_set(chunks: usize, set: &BTreeSet<usize>, read: u64, written: u64) -> Self {
        let mut done: Vec<(usize, usize)> = Vec::new();
        for &i in set {
            match done.last_mut() {
                Some(last) if last.1 == i => last.1 = i + 1,
                _ => done.push((i, i + 1)),
            }
        }
        Checkpoint {
            chunks,
            done,
            bytes_read: read,
            bytes_written: written,
        }
    }

    fn to_set(&self) -> BTreeSet<usize> {
        self.done.iter().flat_map(|&(a, b)| a..b).collect()
    }
}

/// Live counters, readable while the copy runs.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// Split the work into chunks on a `chunk_size` grid. `None` extents = `[0, size)`.
pub fn plan_chunks(size: u64, extents: Option<&[Extent]>, chunk_size: u64) -> Result<Vec<Extent>, CopyError> {
    let mut work: Vec<Extent> = match extents {
        None => vec![Extent {
            offset: 0,
            length: size,
        }],
        Some(list) => {
            for e in list {
                if e.offset.checked_add(e.length).is_none_or(|end| end > size) {
                    return Err(CopyError::ExtentBeyondEnd {
                        offset: e.offset,
                        length: e.length,
                        size,
                    });
                }
            }
            list.iter().copied().filter(|e| e.length > 0).collect()
        }
    };
    work.sort();
    let mut merged: Vec<Extent> = Vec::new();
    for e in work {
        match merged.last_mut() {
            Some(last) if e.offset <= last.end() => last.length = last.length.max(e.end() - last.offset),
            _ => merged.push(e),
        }
    }
    let mut chunks = Vec::new();
    for e in merged {
        let mut pos = e.offset;
        while pos < e.end() {
            let grid_end = (pos / chunk_size + 1) * chunk_size;
            let end = grid_end.min(e.end());
            chunks.push(Extent {
                offset: pos,
                length: end - pos,
            });
            pos = end;
        }
    }
    Ok(chunks)
}

/// Run the copy. `resume` skips the chunks it lists. `save` is called with each new
/// checkpoint, only after the target was synced, so what it records is durable.
pub fn run(
    spec: &CopySpec,
    resume: Option<Checkpoint>,
    cancel: &AtomicBool,
    counters: &Counters,
    save: &mut dyn FnMut(&Checkpoint) -> Result<(), String>,
) -> Result<Checkpoint, CopyError> {
    let unreachable = |source| CopyError::SourceUnreachable {
        endpoint: spec.source.to_string(),
        source,
    };
    let mut first = Nbd::connect(&spec.source).map_err(unreachable)?;
    let size = first.size().map_err(unreachable)?;
    let connections = if first.can_multi_conn() {
        spec.tuning.connections.max(1)
    } else {
        1
    };
    let target = Target::open(&spec.target, size, spec.device_only)?;
    let target_is_zero = spec.target_is_zero || target.created;
    let chunks = plan_chunks(size, spec.extents.as_deref(), spec.tuning.chunk_size)?;

    let resume = resume.unwrap_or_default();
    if !resume.done.is_empty() && resume.chunks != chunks.len() {
        return Err(CopyError::CheckpointMismatch {
            have: resume.chunks,
            need: chunks.len(),
        });
    }
    let done = Mutex::new(resume.to_set());
    let total: u64 = chunks.iter().map(|c| c.length).sum();
    let already: u64 = done.lock().expect("lock").iter().map(|&i| chunks[i].length).sum();
    counters.bytes_total.store(total, Ordering::Relaxed);
    counters.bytes_done.store(already, Ordering::Relaxed);
    counters.bytes_read.store(resume.bytes_read, Ordering::Relaxed);
    counters.bytes_written.store(resume.bytes_written, Ordering::Relaxed);

    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<CopyError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let workers_left = AtomicUsize::new(connections);
    let ctx = Worker {
        spec,
        chunks: &chunks,
        done: &done,
        next: &next,
        stop: &stop,
        cancel,
        counters,
        target: &target,
        target_is_zero,
    };

    let checkpoint = std::thread::scope(|s| -> Result<Checkpoint, CopyError> {
        let mut conns = vec![first];
        for _ in 1..connections {
            conns.push(Nbd::connect(&spec.source).map_err(unreachable)?);
        }
        for nbd in conns.drain(..) {
            let (ctx, failed, left) = (&ctx, &failed, &workers_left);
            s.spawn(move || {
                if let Err(e) = ctx.work(nbd) {
                    failed.lock().expect("lock").get_or_insert(e);
                    ctx.stop.store(true, Ordering::SeqCst);
                }
                left.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // Checkpointer: snapshot what is done, sync the target, then persist the snapshot.
        let mut last_at = Instant::now();
        let mut last_done = already;
        let persist = |save: &mut dyn FnMut(&Checkpoint) -> Result<(), String>| -> Result<Checkpoint, CopyError> {
            let set = done.lock().expect("lock").clone();
            let (r, w) = (
                counters.bytes_read.load(Ordering::SeqCst),
                counters.bytes_written.load(Ordering::SeqCst),
            );
            target.sync()?;
            let cp = Checkpoint::from_set(chunks.len(), &set, r, w);
            save(&cp).map_err(CopyError::Checkpoint)?;
            Ok(cp)
        };
        while workers_left.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(20));
            let now_done = counters.bytes_done.load(Ordering::Relaxed);
            if now_done - last_done >= spec.tuning.checkpoint_bytes
                || last_at.elapsed() >= spec.tuning.checkpoint_interval
            {
                if let Err(e) = persist(save) {
                    stop.store(true, Ordering::SeqCst);
                    failed.lock().expect("lock").get_or_insert(e);
                    break;
                }
                (last_at, last_done) = (Instant::now(), now_done);
            }
        }
        while workers_left.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Whatever happened, record what is durable so nothing is recopied.
        let cp = persist(save);
        if let Some(e) = failed.lock().expect("lock").take() {
            return Err(e);
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(CopyError::Cancelled);
        }
        cp
    })?;
    Ok(checkpoint)
}

struct Worker<'a> {
    spec: &'a CopySpec,
    chunks: &'a [Extent],
    done: &'a Mutex<BTreeSet<usize>>,
    next: &'a AtomicUsize,
    stop: &'a AtomicBool,
    cancel: &'a AtomicBool,
    counters: &'a Counters,
    target: &'a Target,
    target_is_zero: bool,
}

impl Worker<'_> {
    fn work(&self, mut nbd: Nbd) -> Result<(), CopyError> {
        let mut buf = AlignedBuf::new(self.spec.tuning.request_size);
        loop {
            if self.stop.load(Ordering::SeqCst) || self.cancel.load(Ordering::SeqCst) {
                return Ok(());
            }
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(chunk) = self.chunks.get(i) else {
                return Ok(());
            };
            if self.done.lock().expect("lock").contains(&i) {
                continue;
            }
            self.copy_chunk(&mut nbd, *chunk, &mut buf)?;
            self.done.lock().expect("lock").insert(i);
        }
    }

    fn copy_chunk(&self, nbd: &mut Nbd, chunk: Extent, buf: &mut AlignedBuf) -> Result<(), CopyError> {
        let c = self.counters;
        for run in nbd
            .block_status(chunk.offset, chunk.length)
            .map_err(CopyError::SourceRead)?
        {
            if run.zero {
                if !self.target_is_zero {
                    self.target.zero(run.offset, run.len)?;
                    c.bytes_written.fetch_add(run.len, Ordering::Relaxed);
                }
                c.bytes_done.fetch_add(run.len, Ordering::Relaxed);
                continue;
            }
            let mut pos = run.offset;
            while pos < run.offset + run.len {
                let n = ((run.offset + run.len - pos) as usize).min(self.spec.tuning.request_size);
                let data = &mut buf.as_mut_slice()[..n];
                nbd.pread(data, pos).map_err(CopyError::SourceRead)?;
                c.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                if !(self.target_is_zero && is_zero(data)) {
                    self.target.write_at(data, pos)?;
                    c.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                }
                c.bytes_done.fetch_add(n as u64, Ordering::Relaxed);
                pos += n as u64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    #[test]
    fn full_disk_is_split_on_the_grid() {
        let c = plan_chunks(10, None, 4).unwrap();
        assert_eq!(c, vec![e(0, 4), e(4, 4), e(8, 2)]);
    }

    #[test]
    fn extents_are_sorted_merged_and_split() {
        let c = plan_chunks(100, Some(&[e(10, 5), e(2, 3), e(5, 1), e(13, 10)]), 8).unwrap();
        assert_eq!(c, vec![e(2, 4), e(10, 6), e(16, 7)]);
    }

    #[test]
    fn extent_beyond_the_disk_is_refused() {
        assert!(matches!(
            plan_chunks(100, Some(&[e(90, 11)]), 8),
            Err(CopyError::ExtentBeyondEnd { .. })
        ));
        assert!(matches!(
            plan_chunks(100, Some(&[e(u64::MAX, 2)]), 8),
            Err(CopyError::ExtentBeyondEnd { .. })
        ));
    }

    #[test]
    fn checkpoint_round_trips_as_runs() {
        let set: BTreeSet<usize> = [0, 1, 2, 5, 7, 8].into_iter().collect();
        let cp = Checkpoint::from_set(10, &set, 3, 4);
        assert_eq!(cp.done, vec![(0, 3), (5, 6), (7, 9)]);
        assert_eq!(cp.to_set(), set);
    }

    #[test]
    fn zero_detection() {
        let mut b = AlignedBuf::new(8192);
        assert!(is_zero(b.as_mut_slice()));
        b.as_mut_slice()[8191] = 1;
        assert!(!is_zero(b.as_mut_slice()));
    }
}
