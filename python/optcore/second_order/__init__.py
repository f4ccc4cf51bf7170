"""Second-order methods of section 8.6: Newton (damped, saddle-free), conjugate
gradients (linear and nonlinear), BFGS and L-BFGS, with their line searches."""
from .line_search import (LineSearchResult, armijo_backtracking, exact_quadratic_step,
                          strong_wolfe)
from .minimize import OptimizeResult, minimize
from .newton import finite_difference_hessian, hessian_bytes
from .optimizers import BFGS, CG, LBFGS, Newton, NonlinearCG

__all__ = ["minimize", "OptimizeResult", "LBFGS", "BFGS", "CG", "NonlinearCG", "Newton",
           "strong_wolfe", "armijo_backtracking", "exact_quadratic_step", "LineSearchResult",
           "finite_difference_hessian", "hessian_bytes"]
