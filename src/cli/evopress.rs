//! EvoPress's search settings as command-line flags (`prune` and `compare`).

use crate::prune::evopress::EvoPressOptions;
use clap::Args;

fn defaults() -> EvoPressOptions {
    EvoPressOptions::default()
}

/// EvoPress's search settings [defaults: the authors' drop-search configuration; on a CPU a
/// default search of a 30-block model takes hours, see BENCHMARKS.md].
#[derive(Args, Debug, Clone)]
pub struct EvoPressArgs {
    /// EvoPress: generations [default: int(n x (blocks - n) / 1.5), n the blocks to remove].
    #[arg(long)]
    pub evo_generations: Option<usize>,
    /// EvoPress: children per generation.
    #[arg(long, default_value_t = defaults().offspring)]
    pub evo_offspring: usize,
    /// EvoPress: random candidates the first population is selected from.
    #[arg(long, default_value_t = defaults().initially_generated)]
    pub evo_initial: usize,
    /// EvoPress: tokens of the first selection's minibatch.
    #[arg(long, default_value_t = defaults().initial_tokens)]
    pub evo_initial_tokens: usize,
    /// EvoPress: survivors of each selection step of a generation.
    #[arg(long, value_delimiter = ',', default_value = "2,1")]
    pub evo_survivors: Vec<usize>,
    /// EvoPress: tokens of each selection step's minibatch.
    #[arg(long, value_delimiter = ',', default_value = "2048,32768")]
    pub evo_selection_tokens: Vec<usize>,
    /// EvoPress: population size.
    #[arg(long, default_value_t = defaults().population_size)]
    pub evo_population: usize,
    /// EvoPress: most swaps in one mutation.
    #[arg(long, default_value_t = defaults().max_mutations)]
    pub evo_max_mutations: usize,
    /// EvoPress: seed of the search (Python's random.seed, as the authors' --seed).
    #[arg(long, default_value_t = defaults().seed)]
    pub evo_seed: u64,
}

impl EvoPressArgs {
    /// The search settings.
    pub fn options(&self) -> EvoPressOptions {
        EvoPressOptions {
            generations: self.evo_generations,
            offspring: self.evo_offspring,
            initially_generated: self.evo_initial,
            initial_tokens: self.evo_initial_tokens,
            survivors_per_selection: self.evo_survivors.clone(),
            tokens_per_selection: self.evo_selection_tokens.clone(),
            population_size: self.evo_population,
            max_mutations: self.evo_max_mutations,
            seed: self.evo_seed,
        }
    }
}
