/* HTML to plain text with libxml2's forgiving HTML parser. The input is already UTF-8 (mail.c converts
 * each part's charset first). Text nodes are joined with whitespace runs collapsed to one space; block
 * elements end a line; script, style, head-only elements and comments are dropped. The tree is walked
 * iteratively so that deeply nested spam HTML cannot exhaust the stack. */
#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tbert/mail.h"

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;
static void xml_init(void) { xmlInitParser(); }

typedef struct {
    char *s;
    size_t n, cap;
    bool ok;
    bool pending_space, pending_nl; /* a separator is owed before the next visible character */
} textbuf;

static void tb_put(textbuf *b, const char *s, size_t n) {
    if (!b->ok) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->ok = false;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void tb_text(textbuf *b, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* ASCII whitespace and U+00A0 (NBSP, from &nbsp;) collapse */
        bool ws = *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v';
        if (!ws && p[0] == 0xC2 && p[1] == 0xA0) {
            ws = true;
            p++;
        }
        if (ws) {
            b->pending_space = true;
            continue;
        }
        if (b->n > 0) {
            if (b->pending_nl) tb_put(b, "\n", 1);
            else if (b->pending_space) tb_put(b, " ", 1);
        }
        b->pending_nl = b->pending_space = false;
        tb_put(b, (const char *)p, 1);
    }
}

static bool is_dropped(const char *name) {
    static const char *const dropped[] = {"script", "style", "head", "noscript", "template", "object", "select"};
    for (size_t i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
        if (!strcasecmp(name, dropped[i])) return true;
    return false;
}

static bool is_block(const char *name) {
    static const char *const blocks[] = {"p",  "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6",
                                         "table", "blockquote", "pre", "hr", "ul", "ol", "dl", "dt", "dd",
                                         "title", "center", "form", "address", "section", "article", "header",
                                         "footer", "body", "html"};
    for (size_t i = 0; i < sizeof blocks / sizeof blocks[0]; i++)
        if (!strcasecmp(name, blocks[i])) return true;
    return false;
}

/* table cells are separated by a space (inline elements are not: "Vi<b>agra</b>" is one word) */
static bool is_cell(const char *name) { return !strcasecmp(name, "td") || !strcasecmp(name, "th"); }

static bool is_element(const xmlNode *n, bool (*pred)(const char *)) {
    return n->type == XML_ELEMENT_NODE && n->name && pred((const char *)n->name);
}

/* Visits the descendants of `top` in document order. */
static void walk(textbuf *b, xmlNode *top) {
    xmlNode *n = top->children;
    while (n) {
        bool descend = false;
        if (n->type == XML_ELEMENT_NODE && n->name) {
            const char *name = (const char *)n->name;
            if (!is_dropped(name)) {
                if (is_block(name)) b->pending_nl = true;
                if (is_cell(name)) b->pending_space = true;
                /* <img alt="..."> carries words spam likes to hide in images */
                if (!strcasecmp(name, "img")) {
                    xmlChar *alt = xmlGetProp(n, (const xmlChar *)"alt");
                    if (alt) {
                        b->pending_space = true;
                        tb_text(b, (const char *)alt);
                        b->pending_space = true;
                        xmlFree(alt);
                    }
                }
                descend = n->children != NULL;
            }
        } else if ((n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) && n->content) {
            tb_text(b, (const char *)n->content);
        }
        if (descend) {
            n = n->children;
            continue;
        }
        for (;;) { /* leave n: a closing block element ends a line */
            if (is_element(n, is_block)) b->pending_nl = true;
            if (is_element(n, is_cell)) b->pending_space = true;
            if (n->next) {
                n = n->next;
                break;
            }
            n = n->parent;
            if (!n || n == top) return;
        }
    }
}

char *tbert_html_to_text(const char *html, size_t len) {
    pthread_once(&xml_once, xml_init);
    textbuf b = {.ok = true};
    tb_put(&b, "", 0);
    if (len > 0 && len <= INT32_MAX) {
        htmlDocPtr doc = htmlReadMemory(html, (int)len, NULL, "UTF-8",
                                        HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING |
                                            HTML_PARSE_NONET | HTML_PARSE_NOIMPLIED);
        if (doc) {
            walk(&b, (xmlNode *)doc);
            xmlFreeDoc(doc);
        }
    }
    if (!b.ok) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
