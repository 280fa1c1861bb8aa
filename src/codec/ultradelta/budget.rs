//! Per-tensor search for the smallest object within a relative-error budget.

use super::dtype::FloatDtype;
use super::encode::{prune_tensor, write_object, EncodedTensor, TensorPlan};
use super::stats::Fidelity;

/// Sparsities tried, in order. The search stops at the first one where no bit width fits the
/// budget, because the error grows with sparsity.
pub(crate) const SPARSITY_GRID: [f64; 15] = [
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995,
];

/// Limits of the search: bit widths tried, the error budget and the user's extra rescale.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub min_bits: u8,
    pub max_bits: u8,
    pub max_error: f64,
    pub extra_rescale: f64,
}

pub(crate) struct BudgetChoice {
    pub plan: TensorPlan,
    pub encoded: EncodedTensor,
}

/// Returns the plan with the fewest object bytes whose `||W_rec - W_ft|| / ||W_ft||` is within
/// `max_error`.
///
/// At each sparsity of the grid it takes the fewest bits that fit, starting from the bits the
/// previous sparsity needed (more pruning never needs fewer bits). Each sparsity `s` rescales
/// the kept values by `extra / (1 - s)`, as the method does with its global rate. When not even
/// 8 bits without pruning fit, the result is the largest bit width without pruning, flagged
/// as over budget so the caller can store the tensor exactly.
pub(crate) fn search(
    base: &[f32],
    finetuned: &[f32],
    shape: &[u64],
    dtype: FloatDtype,
    template: &TensorPlan,
    budget: &Budget,
) -> BudgetChoice {
    let Budget {
        min_bits,
        max_bits,
        max_error,
        extra_rescale,
    } = *budget;
    let mut best: Option<(TensorPlan, EncodedTensor)> = None;
    let mut start_bits = min_bits;
    for &sparsity in &SPARSITY_GRID {
        let mut fitting = None;
        for bits in start_bits..=max_bits {
            let plan = TensorPlan {
                bits,
                tensor_sparsity: sparsity,
                commit_sparsity: sparsity,
                rescale: extra_rescale / (1.0 - sparsity),
                ..template.clone()
            };
            let pruned = prune_tensor(base, finetuned, &plan);
            let fidelity = Fidelity::measure(base, finetuned, &pruned.decoded(&plan), dtype);
            if fidelity.within_budget(max_error) {
                fitting = Some((plan, pruned));
                break;
            }
        }
        let Some((plan, pruned)) = fitting else { break };
        start_bits = plan.bits;
        let encoded = write_object(&pruned, shape, dtype, &plan);
        if best
            .as_ref()
            .is_none_or(|(_, b)| encoded.payload.len() < b.payload.len())
        {
            best = Some((plan, encoded));
        }
    }
    match best {
        Some((plan, encoded)) => BudgetChoice { plan, encoded },
        None => {
            let plan = TensorPlan {
                bits: max_bits,
                tensor_sparsity: 0.0,
                commit_sparsity: 0.0,
                rescale: extra_rescale,
                ..template.clone()
            };
            let pruned = prune_tensor(base, finetuned, &plan);
            let encoded = write_object(&pruned, shape, dtype, &plan);
            BudgetChoice { plan, encoded }
        }
    }
}
