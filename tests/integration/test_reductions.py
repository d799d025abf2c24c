"""Reductions between methods (DESIGN section 2) on conv cells and over more inner steps (dense cells
and one inner step, and the mask estimator: tests/unit)."""

import pytest
import torch

from pipeline.core.meta_batch import InnerSettings

from helpers import (
    assert_reduces,
    check_meta_curvature_with_identity_matrices_is_maml,
    check_meta_sgd_with_uniform_step_is_maml,
    check_mtnet_with_saturated_mask_is_tnet,
    check_proposition_1_update_stays_in_span_of_first_d_columns_of_T,
    check_tnet_with_identity_T_is_maml,
    conv_batch,
    conv_learner,
)


@pytest.mark.parametrize("steps", [3])
def test_tnet_with_identity_T_is_maml(steps):
    check_tnet_with_identity_T_is_maml(steps)


# conv cells
def test_tnet_with_identity_T_is_maml_on_conv_cells():
    maml, tnet = conv_learner("maml"), conv_learner("tnet")
    p_maml, p_tnet = maml.init_params(3, torch.float64), tnet.init_params(3, torch.float64)
    batch = conv_batch(maml, p_maml)
    assert_reduces(tnet, maml, InnerSettings(0.2, 2), batch, p_tnet, p_maml)


@pytest.mark.parametrize("full,conv", [(True, False), (False, True), (True, True)],
                         ids=["True-dense", "False-conv", "True-conv"])  # (False, False): tests/unit
def test_mtnet_with_saturated_mask_is_tnet(full, conv):
    check_mtnet_with_saturated_mask_is_tnet(full, conv)


@pytest.mark.parametrize("learner_fn", [lambda: conv_learner("mtnet")], ids=["conv"])
def test_proposition_1_update_stays_in_span_of_first_d_columns_of_T(learner_fn):
    check_proposition_1_update_stays_in_span_of_first_d_columns_of_T(learner_fn)


@pytest.mark.parametrize("conv", [True], ids=["conv"])
def test_meta_sgd_with_uniform_step_is_maml(conv):
    check_meta_sgd_with_uniform_step_is_maml(conv)


@pytest.mark.parametrize("method", ["mc1", "mc2"])
@pytest.mark.parametrize("conv", [True])
def test_meta_curvature_with_identity_matrices_is_maml(method, conv):
    check_meta_curvature_with_identity_matrices_is_maml(method, conv)
