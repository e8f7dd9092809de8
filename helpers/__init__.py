"""Shared mechanics for the notebooks: one module per stage of the pipeline, in its order.

    config · config_file · countdown · tiny_world · data · modeling · formatting · batching · logger · checkpoints ·
    distributed · training · logprobs · sft · generation · scoring · results · comparison · experiment ·
    preference · dpo · reward_model · rloo · rft · iterate · robustness · evaluation · report · chat · serve ·
    self_instruct · data_selection · vocab · runner · cli

A module imports only modules to its left (tests/test_layout.py checks it). Notebooks use `import helpers as H`;
the names below are their API, in notebook order. The command line is `python -m helpers --help`.
Nothing here runs on import: no seeds set, no global state changed.
"""
# every notebook: the profile's config, seeds, where outputs go
from .config import (REPO_ROOT, assets_dir, dataset_name, describe_config, out_path, output_root, quality_metric,
                     seed_everything)
from .config_file import config_yaml, get_config     # a profile, then $CONFIG's YAML overrides (make demo CONFIG=…)

# 00_data: datasets, Countdown, the base model, the loss mask, new tokens
from .data import load_split, prepare_data
from .countdown import countdown_completion, countdown_prompt, countdown_reward
from .modeling import count_parameters, load_model, load_tokenizer, quiet_output
from .formatting import build_sft_example, render_chat, show_mask
from .sft import build_initial_model
from .vocab import add_new_tokens, demo_new_tokens, token_fragmentation

# 01_sft_masked, 02_sft_unmasked: SFT, the one training loop, the comparison
from .training import train
from .checkpoints import load_history
from .sft import run_sft, sft_loss
from .results import latest_summary, log_axis, timestamp, write_summary
from .comparison import (countdown_changes, evaluate_checkpoints, loss_change, paired_verdict, plot_sft_comparison,
                         share_difference, stage_change, unfaithful_reasoning, write_dataset_results)
from .experiment import (conclusion, experiment_origin, headline, latest_experiment, mean_std, noise_verdict,
                         run_experiment, write_experiment)

# 03_dpo: DPO and the reward model
from .dpo import dpo_loss, make_dpo_loss, run_dpo
from .reward_model import bradley_terry_loss, make_reward_loss, run_reward_model

# 04_rloo
from .logprobs import shared_prompt_logps
from .scoring import curve_rows, evaluate_checkpoint, exact_match
from .logger import read_tensorboard_scalars
from .rloo import plot_rloo_dynamics, rloo_advantages, rloo_loss, run_rloo
from .rft import at_equal_samples, keep_best, plot_rft_vs_rloo, rft_vs_rloo, run_rft
from .robustness import (committed_range, run_robustness, run_row, target_lines, target_table, where_in_range,
                         write_robustness)

# 05_evaluation
from .scoring import best_of_n, pass_at_k
from .evaluation import LEGEND, evaluate_all_stages, plot_learning_curves, plot_stage_metrics, stage_tables
from .report import chain_notes, write_report

# 06_chat
from .chat import ChatSession, build_chat_widget, side_by_side

# the modules in pipeline order: each imports only those before it (tests/test_layout.py)
MODULES = ("config", "config_file", "countdown", "tiny_world", "data", "modeling", "formatting", "batching", "logger",
           "checkpoints", "distributed", "training", "logprobs", "sft", "generation", "scoring", "results",
           "comparison", "experiment", "preference", "dpo", "reward_model", "rloo", "rft", "iterate", "robustness",
           "evaluation", "report", "chat", "serve", "self_instruct", "data_selection", "vocab", "runner", "cli")
