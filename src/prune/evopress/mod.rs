//! EvoPress (Sieberling et al., 2024, "EvoPress: Towards Optimal Dynamic Model Compression via
//! Evolutionary Search") for depth pruning, as the 2SSP authors run it (FabrizioSandri/2SSP
//! `src/evopress.py`, from IST-DASLab/EvoPress): a candidate removes `n` attention and `n` MLP
//! submodules; its fitness is the KL divergence of its next-token distributions from the dense
//! model's on calibration tokens. The best of `initially_generated` random candidates starts the
//! population; each generation mutates it into `offspring` distinct children (1-`max_mutations`
//! swaps of a removed and a kept submodule of one kind), and successive selections on growing
//! random token minibatches keep the fittest (the parents join the last one).
//!
//! The search draws from CPython's `random` exactly as their code does ([`pyrandom`]), so with the
//! same seed, calibration windows and fitness ranking it makes the same moves and decisions.

pub mod fitness;
pub mod pyrandom;

use crate::engine::Engine;
use crate::progress;
use anyhow::{bail, Result};
use fitness::{minibatch_kl, DenseTargets, Minibatch, DENSE_CACHE_BYTES};
use pyrandom::PyRandom;
use serde::Serialize;

/// Calibration tokens the authors' EvoPress reads (`calibration_tokens`): the default number of
/// windows is this over `--seq-len`.
pub const CALIBRATION_TOKENS: usize = 131_072;

/// EvoPress's search settings (defaults: the authors' drop-search configuration).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvoPressOptions {
    /// Generations (`None`: the authors' `int(n (L - n) / 1.5)`, EvoPress's Table 8).
    pub generations: Option<usize>,
    /// Children per generation.
    pub offspring: usize,
    /// Random candidates the first population is selected from.
    pub initially_generated: usize,
    /// Tokens of the minibatch that selects the first population.
    pub initial_tokens: usize,
    /// Survivors of each selection step of a generation.
    pub survivors_per_selection: Vec<usize>,
    /// Tokens of each selection step's minibatch.
    pub tokens_per_selection: Vec<usize>,
    /// Population size.
    pub population_size: usize,
    /// Most swaps in one mutation.
    pub max_mutations: usize,
    /// Seed of the search (Python's `random.seed`; the authors' default is 0).
    pub seed: u64,
}

impl Default for EvoPressOptions {
    fn default() -> Self {
        Self {
            generations: None,
            offspring: 32,
            initially_generated: 64,
            initial_tokens: 2048,
            survivors_per_selection: vec![2, 1],
            tokens_per_selection: vec![2048, 32768],
            population_size: 1,
            max_mutations: 3,
            seed: 0,
        }
    }
}

impl EvoPressOptions {
    /// Generations run when removing `n` of `n_blocks` submodules of each kind.
    pub fn generations_for(&self, n: usize, n_blocks: usize) -> usize {
        self.generations.unwrap_or(n * (n_blocks - n) * 2 / 3)
    }

    /// Refuses settings the search cannot run with (the authors' loops would never end on some).
    pub fn check(&self, n: usize, n_blocks: usize, calibration_tokens: usize) -> Result<()> {
        if n == 0 || n >= n_blocks {
            bail!("EvoPress needs at least one submodule of each kind removed and one kept: {n} of {n_blocks} blocks");
        }
        for (name, v) in [
            ("--evo-offspring", self.offspring),
            ("--evo-initial", self.initially_generated),
            ("--evo-population", self.population_size),
            ("--evo-max-mutations", self.max_mutations),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.survivors_per_selection.is_empty()
            || self.survivors_per_selection.len() != self.tokens_per_selection.len()
        {
            bail!("--evo-survivors and --evo-selection-tokens need one value per selection step");
        }
        if self.survivors_per_selection.contains(&0) {
            bail!("--evo-survivors must be at least 1 per step");
        }
        let distinct = binomial(n_blocks, n).powi(2);
        if self.initially_generated as f64 > distinct {
            bail!(
                "--evo-initial {} exceeds the {distinct} distinct candidates of {n} of {n_blocks} blocks",
                self.initially_generated
            );
        }
        if self.population_size > self.initially_generated {
            bail!("--evo-population cannot exceed --evo-initial");
        }
        let tokens =
            std::iter::once(self.initial_tokens).chain(self.tokens_per_selection.iter().copied());
        for t in tokens {
            if t < 2 || t > calibration_tokens {
                bail!("an EvoPress minibatch of {t} tokens needs 2 to {calibration_tokens} calibration tokens (--samples x --seq-len)");
            }
        }
        Ok(())
    }
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Which submodules a candidate removes (true: removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Attention submodules, per block.
    pub attention: Vec<bool>,
    /// MLP submodules, per block.
    pub mlp: Vec<bool>,
}

fn marked(mask: &[bool]) -> Vec<usize> {
    (0..mask.len()).filter(|&i| mask[i]).collect()
}

impl Candidate {
    /// Blocks whose attention goes, ascending.
    pub fn removed_attention(&self) -> Vec<usize> {
        marked(&self.attention)
    }

    /// Blocks whose MLP goes, ascending.
    pub fn removed_mlp(&self) -> Vec<usize> {
        marked(&self.mlp)
    }
}

/// A candidate kept by a selection step, with its fitness there.
#[derive(Clone, Debug, Serialize)]
pub struct Survivor {
    /// Blocks whose attention it removes.
    pub attention: Vec<usize>,
    /// Blocks whose MLP it removes.
    pub mlp: Vec<usize>,
    /// KL divergence from the dense model on the step's minibatch.
    pub kl: f64,
}

/// One selection step of the search.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    /// Candidates scored.
    pub candidates: usize,
    /// The minibatch: (calibration window, leading tokens used).
    pub minibatch: Vec<(usize, usize)>,
    /// The fittest, best first.
    pub survivors: Vec<Survivor>,
}

/// What the search found and how.
#[derive(Clone, Debug)]
pub struct EvoPressRun {
    /// The fittest candidate of the last generation (already removed from the model).
    pub best: Candidate,
    /// Generations run.
    pub generations: usize,
    /// Fitness of the best candidate after each generation (the first: the initial selection).
    pub fitness: Vec<f64>,
    /// Every selection step, in order.
    pub selections: Vec<Selection>,
}

/// The search's state: the model, its workspaces, the dense targets and the random stream.
struct Search<'a, E: Engine> {
    model: &'a mut E,
    workspaces: [E::Workspace; 2],
    windows: &'a [&'a [u32]],
    dense: DenseTargets<E>,
    rng: PyRandom,
    selections: Vec<Selection>,
}

impl<E: Engine> Search<'_, E> {
    /// KL of `candidate` on `minibatch`, its submodules held out meanwhile.
    fn fitness(&mut self, candidate: &Candidate, minibatch: &mut Minibatch) -> Result<f64> {
        let n_blocks = self.model.n_blocks();
        let attention: Vec<_> = (0..n_blocks)
            .map(|i| {
                candidate.attention[i]
                    .then(|| self.model.take_attention(i))
                    .flatten()
            })
            .collect();
        let ffn: Vec<_> = (0..n_blocks)
            .map(|i| candidate.mlp[i].then(|| self.model.take_ffn(i)).flatten())
            .collect();
        let kl = minibatch_kl(
            self.model,
            &mut self.workspaces,
            self.windows,
            &self.dense,
            minibatch,
        );
        for (i, a) in attention.into_iter().enumerate() {
            if a.is_some() {
                self.model.restore_attention(i, a);
            }
        }
        for (i, f) in ffn.into_iter().enumerate() {
            if f.is_some() {
                self.model.restore_ffn(i, f);
            }
        }
        kl
    }

    /// Distinct random windows, the last cut short, holding exactly `tokens` tokens.
    fn minibatch(&mut self, tokens: usize) -> Vec<(usize, usize)> {
        let (mut parts, mut used) = (Vec::<(usize, usize)>::new(), 0);
        while used < tokens {
            let w = self.rng.randint(0, self.windows.len() - 1);
            if parts.iter().any(|&(p, _)| p == w) {
                continue;
            }
            let len = self.windows[w].len().min(tokens - used);
            parts.push((w, len));
            used += len;
        }
        parts
    }

    /// The authors' `selection`: the `survive` fittest of `candidates` on a fresh minibatch.
    fn select(
        &mut self,
        candidates: Vec<Candidate>,
        survive: usize,
        tokens: usize,
    ) -> Result<(Vec<Candidate>, Vec<f64>)> {
        let mut minibatch = Minibatch::new(self.minibatch(tokens), DENSE_CACHE_BYTES);
        let fitness = candidates
            .iter()
            .map(|c| self.fitness(c, &mut minibatch))
            .collect::<Result<Vec<f64>>>()?;
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| fitness[a].total_cmp(&fitness[b]));
        order.truncate(survive);
        let survivors: Vec<Candidate> = order.iter().map(|&i| candidates[i].clone()).collect();
        let kept: Vec<f64> = order.iter().map(|&i| fitness[i]).collect();
        self.selections.push(Selection {
            candidates: candidates.len(),
            minibatch: minibatch.parts().to_vec(),
            survivors: survivors
                .iter()
                .zip(&kept)
                .map(|(c, &kl)| Survivor {
                    attention: c.removed_attention(),
                    mlp: c.removed_mlp(),
                    kl,
                })
                .collect(),
        });
        Ok((survivors, kept))
    }

    /// A random candidate removing `n` of each kind (`random.sample` for attention, then MLP).
    fn random_candidate(&mut self, n: usize) -> Candidate {
        let n_blocks = self.model.n_blocks();
        let mut c = Candidate {
            attention: vec![false; n_blocks],
            mlp: vec![false; n_blocks],
        };
        for i in self.rng.sample(n_blocks, n) {
            c.attention[i] = true;
        }
        for i in self.rng.sample(n_blocks, n) {
            c.mlp[i] = true;
        }
        c
    }

    /// A mutated copy of a random member of `population`.
    fn child(&mut self, population: &[Candidate], max_mutations: usize) -> Candidate {
        let n_blocks = self.model.n_blocks();
        let mut c = population[self.rng.choice_index(population.len())].clone();
        let flips = self
            .rng
            .randint(1, max_mutations)
            .min(self.rng.randint(1, max_mutations));
        for _ in 0..flips {
            let mask = if self.rng.randint(0, 1) == 0 {
                &mut c.attention
            } else {
                &mut c.mlp
            };
            let mut remove = self.rng.randint(0, n_blocks - 1);
            while mask[remove] {
                remove = self.rng.randint(0, n_blocks - 1);
            }
            let mut restore = self.rng.randint(0, n_blocks - 1);
            while !mask[restore] {
                restore = self.rng.randint(0, n_blocks - 1);
            }
            mask[remove] = true;
            mask[restore] = false;
        }
        c
    }
}

/// Draws that may be rejected as duplicates before the search gives up (the authors' loop would
/// spin for ever on a model with too few distinct children).
const MAX_REJECTED_DRAWS: usize = 100_000;

/// Removes `n` attention and `n` MLP submodules from `model` by EvoPress's search on `windows`.
pub fn evopress<E: Engine>(
    model: &mut E,
    windows: &[&[u32]],
    n: usize,
    opts: &EvoPressOptions,
) -> Result<EvoPressRun> {
    let n_blocks = model.n_blocks();
    let calibration_tokens = windows.iter().map(|w| w.len()).sum();
    opts.check(n, n_blocks, calibration_tokens)?;
    let generations = opts.generations_for(n, n_blocks);
    let longest = windows.iter().map(|w| w.len()).max().unwrap_or(1);
    let mut workspaces = [
        model.workspace(longest, longest)?,
        model.workspace(longest, longest)?,
    ];
    let dense = DenseTargets::new(&*model, &mut workspaces[0], windows)?;
    let mut search = Search {
        model,
        workspaces,
        windows,
        dense,
        rng: PyRandom::new(opts.seed),
        selections: Vec::new(),
    };
    let bar = progress::bar(generations as u64 + 1, "EvoPress");
    let mut initial: Vec<Candidate> = Vec::with_capacity(opts.initially_generated);
    while initial.len() < opts.initially_generated {
        let c = search.random_candidate(n);
        if !initial.contains(&c) {
            initial.push(c);
        }
    }
    let (mut population, fit) =
        search.select(initial, opts.population_size, opts.initial_tokens)?;
    let mut fitness = vec![fit[0]];
    bar.inc(1);
    let last_survive = *opts.survivors_per_selection.last().expect("checked");
    for _ in 0..generations {
        let mut offspring: Vec<Candidate> = Vec::with_capacity(opts.offspring);
        let mut rejected = 0;
        while offspring.len() < opts.offspring {
            let c = search.child(&population, opts.max_mutations);
            if offspring.contains(&c) || population.contains(&c) {
                rejected += 1;
                if rejected > MAX_REJECTED_DRAWS {
                    bail!("EvoPress: cannot draw {} distinct children of this population (too few blocks for --evo-offspring)", opts.offspring);
                }
                continue;
            }
            offspring.push(c);
        }
        let mut fit = Vec::new();
        let steps = opts
            .survivors_per_selection
            .iter()
            .zip(&opts.tokens_per_selection);
        for (&survive, &tokens) in steps {
            // As the authors: the parents join every step that keeps as many as the last one.
            if survive == last_survive {
                for p in &population {
                    if !offspring.contains(p) {
                        offspring.push(p.clone());
                    }
                }
            }
            (offspring, fit) = search.select(offspring, survive, tokens)?;
        }
        population = offspring;
        fitness.push(fit[0]);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let best = population.swap_remove(0);
    let Search {
        model, selections, ..
    } = search;
    for i in 0..n_blocks {
        if best.attention[i] {
            model.remove_attention(i);
        }
        if best.mlp[i] {
            model.remove_ffn(i);
        }
    }
    Ok(EvoPressRun {
        best,
        generations,
        fitness,
        selections,
    })
}
