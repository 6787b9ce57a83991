#include "head_ref.h"

#include <math.h>
#include <stdlib.h>

#include "testutil.h"

double tu_head_ref_loss(const tbert_head *h, const double *P, const float *x, int n, const int *y) {
    const tbert_head_config *c = &h->cfg;
    int D = c->in_dim, Hd = c->hidden, O = tbert_head_out_dim(c), K = Hd ? Hd : D;
    const double *w1 = Hd ? P + h->tensors[0].offset : NULL, *b1 = Hd ? P + h->tensors[1].offset : NULL;
    const double *w2 = P + h->tensors[Hd ? 2 : 0].offset, *b2 = P + h->tensors[Hd ? 3 : 1].offset;
    double *hv = tu_xmalloc(sizeof(double) * (size_t)K), total = 0;
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * D;
        for (int j = 0; j < K; j++) {
            if (!Hd) {
                hv[j] = xi[j];
                continue;
            }
            double a = b1[j];
            for (int d = 0; d < D; d++) a += w1[(size_t)j * D + d] * xi[d];
            hv[j] = 0.5 * a * (1 + erf(a / sqrt(2.0)));
        }
        double z[8] = {0}, l;
        for (int o = 0; o < O; o++) {
            z[o] = b2[o];
            for (int j = 0; j < K; j++) z[o] += w2[(size_t)o * K + j] * hv[j];
        }
        if (c->binary) {
            double t = y[i] == c->positive;
            l = fmax(z[0], 0) - z[0] * t + log1p(exp(-fabs(z[0])));
        } else {
            double mx = z[0], se = 0;
            for (int o = 1; o < O; o++) mx = fmax(mx, z[o]);
            for (int o = 0; o < O; o++) se += exp(z[o] - mx);
            l = mx + log(se) - z[y[i]];
        }
        total += l;
    }
    free(hv);
    return total / n;
}
