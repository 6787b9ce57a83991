/* Binomial confidence intervals: the regularized incomplete beta function, its quantile, Clopper-Pearson
 * intervals, and how many negatives a false-positive target needs (include/tbert/metrics.h). */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "tbert/metrics.h"

/* Continued fraction of I_x(a,b) * B(a,b) / (x^a (1-x)^b) (the one that converges for x < (a+1)/(a+b+2)),
 * evaluated from the front with the modified Lentz method:
 *   1 / (1 + d1 / (1 + d2 / (1 + ...))),  d_{2m+1} = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),
 *                                        d_{2m}   =  m(b-m) x / ((a+2m-1)(a+2m)). */
static double beta_cf(double a, double b, double x) {
    const double tiny = 1e-300, eps = 1e-16;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(d) < tiny) d = tiny;
    d = 1.0 / d;
    double f = d;
    for (int m = 1; m <= 10000; m++) {
        double num = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)); /* d_{2m} */
        d = 1.0 + num * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + num / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        f *= d * c;
        num = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)); /* d_{2m+1} */
        d = 1.0 + num * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + num / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        double step = d * c;
        f *= step;
        if (fabs(step - 1.0) < eps) break;
    }
    return f;
}

double tbert_beta_inc(double a, double b, double x) {
    if (!(a > 0) || !(b > 0) || !(x >= 0) || !(x <= 1) || !isfinite(a) || !isfinite(b)) return NAN;
    if (x == 0) return 0;
    if (x == 1) return 1;
    /* x^a (1-x)^b / (a B(a,b)), in logs */
    double lfront = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
    if (x < (a + 1.0) / (a + b + 2.0)) return exp(lfront) * beta_cf(a, b, x) / a;
    return 1.0 - exp(lfront) * beta_cf(b, a, 1.0 - x) / b;
}

double tbert_beta_quantile(double q, double a, double b) {
    if (!(q >= 0) || !(q <= 1) || !(a > 0) || !(b > 0)) return NAN;
    double lo = 0, hi = 1;
    if (q == 0) return 0;
    if (q == 1) return 1;
    /* I_x(a,b) increases with x: keep I(lo) < q <= I(hi) */
    for (int it = 0; it < 200 && hi - lo > 1e-15 * fmax(lo, 1e-300) && hi - lo > DBL_MIN; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        if (tbert_beta_inc(a, b, mid) < q) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

bool tbert_clopper_pearson(int64_t k, int64_t n, double conf, double *lo, double *hi) {
    *lo = 0;
    *hi = 1;
    if (n < 0 || k < 0 || k > n || !(conf > 0 && conf < 1)) return false;
    if (n == 0) return true;
    double alpha = 1 - conf;
    if (k > 0) *lo = tbert_beta_quantile(alpha / 2, (double)k, (double)(n - k + 1));
    if (k < n) *hi = tbert_beta_quantile(1 - alpha / 2, (double)(k + 1), (double)(n - k));
    return true;
}

int64_t tbert_negatives_needed(double fpr, double conf) {
    if (fpr >= 1) return 0;
    if (!(fpr > 0) || !(conf > 0 && conf < 1)) return INT64_MAX;
    /* smallest n with 1 - (alpha/2)^(1/n) <= fpr  <=>  n >= log(alpha/2) / log(1 - fpr) */
    double n = log((1 - conf) / 2) / log1p(-fpr);
    if (!(n < 9e18)) return INT64_MAX;
    int64_t m = (int64_t)ceil(n - 1e-9);
    return m < 1 ? 1 : m;
}
