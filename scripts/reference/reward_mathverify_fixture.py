"""Writes crates/rl-reward/tests/fixtures/math_verify_cases.json.

Expected verdicts transcribed from the test suite of huggingface/Math-Verify (MIT licence),
`tests/test_all.py`, `tests/test_yujianll.py` and `tests/test_mixed_number_extraction.py`: each
case keeps its source file and test function name. Only the (gold, prediction, expected verdict,
precision) data is transcribed; no code. Cases whose inputs are several thousand characters of
model output were not transcribed; they are listed in `skipped` with their test name.

`precision` is Math-Verify's `float_rounding` argument when the test sets a non-default value.
Some tests call `verify` on expression-only extraction (`match_types=["expr"]`); the Rust verifier
has a single extraction pipeline, so these are graded the same way.

Run: scripts/.venv/bin/python scripts/reference/reward_mathverify_fixture.py
"""

import json
import math
import pathlib

A = "tests/test_all.py"
Y = "tests/test_yujianll.py"
M = "tests/test_mixed_number_extraction.py"

cases = []


def add(src, test, rows, precision=None):
    for row in rows:
        gold, pred, expected = row[:3]
        p = row[3] if len(row) > 3 else precision
        cases.append({"source": src, "test": test, "gold": gold, "pred": pred,
                      "expected": bool(expected), "precision": p})


add(A, "test_number_extraction", [
    ("-5", "-5", 1),
    ("7425000", "7,425,000", 1),
    ("1000", "1 000", 1),
    ("1000", "1000.0", 1),
    ("1000.0", "1,000.0", 1),
    ("1000.99", "1000,99", 1),
    ("1,22", "1.22", 1),
    ("2.74", "Soucis : 2,74 $ a..", 1),
    ("0.4", ".4", 1),
    ("1000.99", "1,000.99", 1),
    ("1000.99", "$1,000.99", 1),
    ("1000.99", "1,000.99$", 1),
    ("1000.99", "the number is not 10 which is 1,000.99€", 1),
    ("1000.99", "so the number is 10 which is 1,000.99m²", 1),
    ("1000.99", "not it's not 10 it's 1,000.99m²", 1),
    ("0,111", "0.111", 1),
    ("2", "AZYUK2A", 0),
])

add(A, "test_simple_fraction_notation", [
    ("10/9", "\\frac{10}{9}", 1),
    ("-10/9", "-\\frac{10}{9}", 1),
])

add(A, "test_sets_handling", [
    ("$[0,1)$", "$[0,1)$", 1),
    ("$[0,9)$", "$[0,1)$", 0),
    ("$(0,9)$", "$[0,9)$", 0),
    ("$1$", "$-[0,1)$", 0),
])

add(A, "test_latex_notation", [
    ("$9$", "Answer \\[ 9 \\]", 1),
    ("$9$", "Answer $ 9 $", 1),
    ("$9$", "Answer $$ 9 $$", 1),
    ("$9$", "Answer \\( 9 \\)", 1),
    ("$10$", "Answer \\( (9+1) \\)", 1),
    ("$9$", "Answer $ \n 9 \n $", 0),
    ("$9$", "Answer \\( \n 9 \n \\)", 0),
    ("$9$", "Answer \\[ \n 9 \n \\]", 1),
    ("$9$", "Answer $$ \n 9 \n $$", 1),
    ("$10/9$", "Answer $ \\frac{1}{2} \\$ = \\frac{10}{9} $", 1),
    ("$1/3$", "$\\frac13 $", 1),
    ("$1$", "$\\frac3{3} $", 1),
    ("$\\sqrt{3}$", "$\\sqrt3 $", 1),
    ("$1/3$", "$\\cfrac{1}{3} $", 1),
    ("$1/3$", "$\\dfrac{1}{3} $", 1),
    ("$1/3$", "$\\tfrac{1}{3} $", 1),
    ("$1/3$", "$ 1/3 $", 1),
    ("$1/3$", "$\\left( \\frac{1}{3} \\right)$", 1),
    ("$1/3$", "$\\boxed{\\frac{1}{3}}$", 1),
    ("$1/3$", "$\\frac{1}{3} \\text{meters}$", 1),
    ("$1/3$", "$\\frac{1}{3} \\textbf{meters}$", 1),
    ("$1/3$", "$k = \\frac{1}{3}$", 1),
])

add(A, "test_percent_notation", [
    ("$28\\%$", "28 percent", 1),
    ("$28\\%$", "28 pct", 1),
    ("$28\\%$", "28 %", 1),
    ("$28\\%$", "$28$ %", 1),
    ("$28\\%$", "$28$ percent", 1),
    ("$28\\%$", "$\\boxed{28}$ pct", 1),
    ("$28\\%$", "$\\boxed{28 pct}", 1),
    ("$28\\%$", "$\\boxed{28 percent}", 1),
    ("$28\\%$", "$\\boxed{28 percentage}", 1),
    ("$28\\%$", "28", 1),
    ("$0.28$", "28", 0),
    ("$28/100$", "28", 0),
    ("$28$", "28/100", 0),
    ("$\\frac{28}{100}$", "28", 0),
    ("$28*\\frac{1}{100}$", "28", 0),
])

add(A, "test_latex_notation_math", [
    ("$2-2p$", "Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\\boxed{2-2p}$.", 1),
    ("\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}",
     "\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}", 1),
    ("$(3, \\frac{\\pi}{2})$",
     r"We have that $r = \\sqrt{0^2 + 3^2} = 3.$  Also, if we draw the line connecting the origin and $(0,3),$ this line makes an angle of $\\frac{\\pi}{2}$ with the positive $x$-axis.\n\n[asy]\nunitsize(0.8 cm);\n\ndraw((-0.5,0)--(3.5,0));\ndraw((0,-0.5)--(0,3.5));\ndraw(arc((0,0),3,0,90),red,Arrow(6));\n\ndot((0,3), red);\nlabel(\"$(0,3)$\", (0,3), W);\ndot((3,0), red);\n[/asy]\n\nTherefore, the polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
     1),
    ("$\\frac{14}{3}$",
     r"$f(-2)+f(-1)+f(0)=\frac{3(-2)-2}{-2-2}+\frac{3(-1)-2}{-1-2}+\frac{3(0)-2}{0-2}=\frac{-8}{-4}+\frac{-5}{-3}+\frac{-2}{-2}=2+\frac{5}{3}+1=\boxed{\frac{14}{3}}$",
     1),
    ("$\\text{Evelyn}$",
     r"Evelyn covered more distance in less time than Briana, Debra and Angela, so her average speed is greater than any of their average speeds. Evelyn went almost as far as Carla in less than half the time that it took Carla, so Evelyn's average speed is also greater than Carla's. Therefore, $\boxed{\text{Evelyn}}$ is our answer.",
     1),
    ("$90^\\circ$",
     r"For the first line, let $t = 2x = 3y = -z.$  Then \[\begin{pmatrix} x \\ y \\ z \end{pmatrix} = \begin{pmatrix} t/2 \\ t/3 \\ -t \end{pmatrix} = \frac{t}{6} \begin{pmatrix} 3 \\ 2 \\ -6 \end{pmatrix}.\]Thus, the direction vector of the first line is $\begin{pmatrix} 3 \\ 2 \\ -6 \end{pmatrix}.$ For the second line, let $t = 6x = -y = -4z.$  Then \[\begin{pmatrix} x \\ y \\ z \end{pmatrix} = \begin{pmatrix} t/6 \\ -t \\ -t/4 \end{pmatrix} = \frac{t}{12} \begin{pmatrix} 2 \\ -12 \\ -3 \end{pmatrix}.\]Thus, the direction vector of the first line is $\begin{pmatrix} 2 \\ -12 \\ -3 \end{pmatrix}.$ Note that \[\begin{pmatrix} 3 \\ 2 \\ -6 \end{pmatrix} \cdot \begin{pmatrix} 2 \\ -12 \\ -3 \end{pmatrix} = 0.\]Hence, the angle between the lines is $\boxed{90^\circ}.$",
     1),
    ("$3\\sqrt{13}$",
     r"We use the distance formula:  \begin{align*} \sqrt{(2 - (-4))^2 + ((-6) - 3)^2} &= \sqrt{6^2 + (-9)^2}\\ & = \sqrt{36 + 81}\\ & = \sqrt{117} = \boxed{3\sqrt{13}}. \end{align*}",
     1),
    ("$\\frac{3}{56}$",
     r"We also know that $q(-1) = ((-1)^2 - 1)p(-1) + 1 = 1.$  Setting $x = -1$ in the equation above, we get \[q(-1) = 20160(-a + b),\]so $-a + b = \frac{1}{20160}.$  Solving for $a$ and $b,$ we find $a = -\frac{29}{40320}$ and $b = -\frac{3}{4480}.$  Hence, \begin{align*} q(x) &= \left( -\frac{29}{40320} x - \frac{3}{4480} \right) (x - 2)(x - 3) \dotsm (x - 7) \\ &= -\frac{(29x + 27)(x - 2)(x - 3) \dotsm (x - 7)}{40320}. \end{align*}In particular, \[q(8) = -\frac{(29 \cdot 8 + 27)(6)(5) \dotsm (1)}{40320} = -\frac{37}{8},\]so \[p(8) = \frac{q(8) + 8}{8^2 - 1} = \boxed{\frac{3}{56}}.\]",
     1),
    ("$2$",
     r"Of the two-digit perfect squares, only $4^2=16$ and $6^2=36$ end in $6$. Thus, there are $\boxed{2}$ distinct possible values for $B$.",
     1),
    ("$15\\mbox{ cm}^2$",
     r"The shaded triangle has a base of length $10\text{ cm}.$ Since the triangle is enclosed in a rectangle of height $3\text{ cm},$ then the height of the triangle is $3\text{ cm}.$ (We know that the enclosing shape is a rectangle, because any figure with four sides, including two pairs of equal opposite sides, and two right angles must be a rectangle.) Therefore, the area of the triangle is $$\frac{1}{2}\times 3 \times 10 = \boxed{15\mbox{ cm}^2}.$$",
     1),
    ("$-2,1$",
     r"By the Integer Root Theorem, the possible integer roots are all the divisors of 14 (including negative divisors), which are $-14,$ $-7,$ $-2,$ $-1,$ $1,$ $2,$ $7,$ and $14.$  Checking, we find that the only integer roots are $\boxed{-2,1}.$",
     1),
    ("$9$",
     r"We use the property that $a \equiv b \pmod{m}$ implies $a^c \equiv b^c \pmod{m}$. Since $129 \equiv -3 \pmod{11}$ and $96 \equiv -3 \pmod{11}$, we have  $$129^{34}+96^{38} \equiv (-3)^{34}+(-3)^{38} \equiv 3^{34}+3^{38} \pmod{11}.$$ Since $3^5 \equiv 1 \pmod{11},$ we can see that $3^{34} = (3^5)^{6} \cdot 3^4$ and $3^{38} = (3^5)^{7} \cdot 3^3.$ Then, $129^{34}+96^{38} \equiv \boxed{9} \pmod{11}.$",
     1),
    ("$90^\\circ$",
     "Therefore, \\begin{align*} \\angle BAC &= \\angle BAD + \\angle DAC \\\\ &= 50^\\circ+40^\\circ \\\\ &= \\boxed{90^\\circ}. \\end{align*}",
     1),
    ("$0$",
     "Note that $p(x)$ has degree at most 2.  Also, $p(a) = p(b) = p(c) = 1.$  Thus, the polynomials $p(x)$ and 1 agree at three different values, so by the Identity Theorem, they are the same polynomial.  Hence, the degree of $p(x)$ (which is the constant polynomial 1) is $\\boxed{0}.$",
     1),
    ("$204_5$",
     r"We may carry out long division in base 5 just as in base 10. We have  \[ \begin{array}{c|ccc} \multicolumn{2}{r}{2} & 0 & 4 \\ \cline{2-4} 2 & 4 & 1 & 3 \\ \multicolumn{2}{r}{4} & \downarrow & \\ \cline{2-2} \multicolumn{2}{r}{0} & 1 & \\ \multicolumn{2}{r}{} & 0 & \downarrow \\ \cline{3-3} \multicolumn{2}{r}{} & 1 & 3 \\ \multicolumn{2}{r}{} & 1 & 3 \\ \cline{3-4} \multicolumn{2}{r}{} & & 0 \end{array} \]for a quotient of $\boxed{204_5}$. Note that in the above calculation we have used that $13_5$ divided by $2_5$ is $4_5$, which follows from $4_5\times2_5=8_{10}=13_5$.",
     1),
    ("$(6,31,-1)$",
     "Let $\\alpha$ be a root of $x^3 - 3x^2 + 4x - 1 = 0,$ so $\\alpha^3 = 3 \\alpha^2 - 4 \\alpha + 1.$ Then solving the system of equations, we find $(p,q,r) = \\boxed{(6,31,-1)}.$",
     1),
    ("$1 \\pm \\sqrt{19}$",
     "This simplifies to $64y + 1920 = 0,$ so $y = -30.$ Then $x^2 - 2x - 48 = -30,$ or $x^2 - 2x - 18 = 0.$ By the quadratic formula, $x = \\boxed{1 \\pm \\sqrt{19}}.$",
     1),
    ("$3 \\pm 2 \\sqrt{2}$",
     "This gives us $x^2 + 1 = 6x,$ or $x^2 - 6x + 1 = 0.$ By the quadratic formula, the roots are $x = \\boxed{3 \\pm 2 \\sqrt{2}}.$",
     1),
    ("$\\{1\\pm\\sqrt{5},-2\\}$",
     "The roots of $P(x)$ are $-2$ and $1 \\pm \\sqrt{5}$, so the answer is $\\boxed{\\{1\\pm\\sqrt{5},-2\\}}.$",
     1),
    ("$f(2) < f(1) < f(4)$",
     'The graph of $f(x) = x^2 + bx + c$ is an upward-facing parabola, and the condition\n\\[f(2 + t) = f(2 - t)\\]tells us that the axis of symmetry of the parabola is the line $x = 2.$  Thus, $f(x)$ is an increasing function of $|x - 2|.$  In other words, the farther $x$ is from 2, the greater $f(x)$ is.\n\n[asy]\nunitsize(1.5 cm);\n\nreal parab (real x) {\n  return (x^2/4);\n}\n\ndraw(graph(parab,-2,2),red);\ndraw((0,-0.5)--(0,2),dashed);\n\nlabel("$x = 2$", (0,2), N);\ndot("$(2,f(2))$", (0,0), SE);\ndot("$(1,f(1))$", (-0.8,parab(-0.8)), SW);\ndot("$(4,f(4))$", (1.6,parab(1.6)), SE);\n[/asy]\n\nHence, $\\boxed{f(2) < f(1) < f(4)}.$',
     1),
    ("$2 \\sin b \\cos a$",
     "By sum-to-product,\n\\[\\sin (a + b) - \\sin (a - b) = \\boxed{2 \\sin b \\cos a}.\\]",
     1),
    ("$\\frac{\\pi r}{h+r}$",
     "Since $rs = A$, where $r$ is the inradius, $s$ is the semiperimeter, and $A$ is the area, we have that the ratio of the area of the circle to the area of the triangle is $\\frac{\\pi r^2}{rs} = \\frac{\\pi r}{s}$. Now we try to express $s$ as $h$ and $r$. Denote the points where the incircle meets the triangle as $X,Y,Z$, where $O$ is the incenter, and denote $AX = AY = z, BX = BZ = y, CY = CZ = x$. Since $XOZB$ is a square (tangents are perpendicular to radius), $r = BX = BZ = y$. The perimeter can be expressed as $2(x+y+z)$, so the semiperimeter is $x+y+z$. The hypotenuse is $AY+CY = z+x$. Thus we have $s = x+y+z = (z+x)+y = h+r$. The answer is $\\boxed{\\frac{\\pi r}{h+r}}$.'], Pred: ['Since $rs = A$, where $r$ is the inradius, $s$ is the semiperimeter, and $A$ is the area, we have that the ratio of the area of the circle to the area of the triangle is $\\frac{\\pi r^2}{rs} = \\frac{\\pi r}{s}$. Now we try to express $s$ as $h$ and $r$. Denote the points where the incircle meets the triangle as $X,Y,Z$, where $O$ is the incenter, and denote $AX = AY = z, BX = BZ = y, CY = CZ = x$. Since $XOZB$ is a square (tangents are perpendicular to radius), $r = BX = BZ = y$. The perimeter can be expressed as $2(x+y+z)$, so the semiperimeter is $x+y+z$. The hypotenuse is $AY+CY = z+x$. Thus we have $s = x+y+z = (z+x)+y = h+r$. The answer is $\\boxed{\\frac{\\pi r}{h+r}}$.",
     1),
    ("$125$ miles", "The distance is $\\boxed{125\\textnormal{ miles}}.$", 1),
    ("$[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0) \\cup (0, 1) \\cup (1, \\infty)$",
     "The solution set is $\\boxed{[-1, -\\tfrac12) \\cup (-\\tfrac12, 0) \\cup (0, 1) \\cup (1, \\infty)}.$", 1),
    ("$\\sqrt{2}+\\sqrt{5}$", "The answer is $\\boxed{\\sqrt 2+\\sqrt 5}$", 1),
    ("$\\frac{9}{4}\\pi$", "Therefore $\\boxed{\\frac94\\pi}$.", 1),
    ("x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$", "x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$", 1),
])

add(A, "test_relations_math", [
    ("$x >= 5$", "Therefore $x \\geq 5$ is the solution.", 1),
    ("$x < 3$", "We find that $x \\lt 3$.", 1),
    ("$x \\leq 2$", "Thus $x <= 2$ is our answer.", 1),
    ("$x > 5$", "Therefore $x \\gt 5$ is the solution.", 1),
    ("$x != 3$", "We find that $x \\neq 3$.", 1),
    ("$x > 5$", "Therefore $x < 5$ is the solution.", 0),
    ("$x \\geq 5$", "The solution is $x \\leq 5$", 0),
    ("$x \\neq 5$", "The solution is $x != 5$", 1),
    ("$x \\leq 5$", "$5 \\geq x$", 1),
    ("$x \\geq 5$", "$5 \\leq x$", 1),
    ("$x = 11$", "$x = 5+5+1 = 7 =11$", 1),
    ("$7 = 11a+c$", "$11a+c$", 0),
    ("$x = 1/3$", "$x = 5+5+1 = 1/3 \\approx 11$", 1),
    ("$11$", "$x=11$", 1),
    ("$11$", "$x\\approx11$", 1),
    ("$1/3$", "$x=1/3\\approx1.3$", 1),
    ("$x < 1$", "$-x > -1$", 1),
    ("$x < 1$", "$x > -1$", 0),
    ("$x <= 1$", "$-x >= -1$", 1),
    ("$a +3z = 0$", "$0$", 0),
    ("$1 = \\zzz = x = 0$", "$0$", 1),
    ("$2x + z = 1$", "$1$", 0),
    ("$a^2 + b = 0$", "$0$", 0),
    ("$k=1$", "$1$", 1),
    ("$1$", "$k=1$", 1),
    ("$z = 1 + 1 = 2$", "$z = 3+3 = 2$", 1),
    ("$2x+4y-3=0$", "$y=-\\frac{1}{2}x+\\frac{3}{4}$", 1),
    ("$x^2/4 + y^2/3 = 1$", "$x^2/16 + y^2/12 = 1/4$", 1),
])

add(A, "test_matrix_extraction", [
    (r"$\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$", r"The identity matrix is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $.", 1),
    (r"$\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}$", r"Here is a zero matrix: $ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $", 1),
    (r"$\begin{pmatrix}1 & 2 \\3 & 4\end{pmatrix}$", r"Special matrix: $ \left[\begin{array}{cc}1 & 2 \\3 & 4\end{array}\right] $", 1),
    (r"$\begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & \frac{7}{8}\end{pmatrix}$",
     r"Matrix with fractions: $ \begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & \frac{7}{8}\end{pmatrix} $", 1),
    (r"$\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}$",
     r"The sum is $\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ 7 & 8\end{pmatrix}$", 1),
    (r"$\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$",
     r"When multiplying by identity: $\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$", 1),
    (r"$\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}$", r"The matrix is $\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}$", 0),
])

add(A, "test_precision", [("$\\frac{1}{3}$", "0.3333$", 1, 4)])

add(A, "test_complex_math_expressions", [
    ("$\\frac{1}{12}$", "$0.0833333333333333$", 1, 6),
    ("$(1,\\frac{9}{2})$", "$(1,4.5)$", 1, 6),
    ("$\\frac{x+2}{7}$", "$\\frac{x}{7}+\\frac{2}{7}$", 1, 6),
    ("$\\tan^2(y)+1$", "$\\sec^2(y)$", 1, 6),
    ("$\\begin{pmatrix}-\\\frac{7}{4}&-2\\\\\\\\4&\\\\frac{1}{4}\\\\\\\\\\\\end{pmatrix}$",
     "$\\begin{pmatrix}-\\\frac{7}{4}&-2\\\\\\\\4&\\\\frac{1}{4}\\\\\\\\\\\\end{pmatrix}$", 1, 6),
    ("$\\begin{pmatrix}\\frac{1}{3\\sqrt[3]{x}^2}&0&0\\\\\\\\0&1&0\\\\\\\\-\\\\sin(x)&0&0\\\\\\\\\\\\end{pmatrix}$",
     "$\\begin{pmatrix}\\frac{1}{3x^{2/3}}&0&0\\\\\\\\0&1&0\\\\\\\\-\\\\sin(x)&0&0\\\\end{pmatrix}$", 1, 6),
    ("$34x+45y-20z+100=0$", "$-34x-45y+20z-100=0$", 1, 6),
    ("$(\\begin{pmatrix}\\frac{1}{3}\\\\\\\\ \\frac{1}{5} \\end{pmatrix})$", "$\\begin{pmatrix}0.33\\\\\\\\0.2 \\end{pmatrix}$", 1, 2),
    ("$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}$", "$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}$", 1, 6),
    ("$(a+5)(b+2)$", "$(+5)(b+2)$", 0, 6),
    ("$2$", "$\\frac{1+\\sqrt{5}}{2}$", 0, 6),
    ("$4$", "$\\frac{34}{16}+\\frac{\\sqrt{1358}}{16}$", 0, 6),
    ("$1\\sqrt{19}$", "$1$", 0, 6),
    ("$(\\frac{3}{5},\\frac{8}{3}]$", "$(0.6,2.6667]$", 1, 2),
    ("$x+2n+1$", "$x+1$", 0, 6),
])

add(A, "test_math_extraction_edge_cases", [
    ("$2/3$", r"and then Alice wins the game from that point on. The probability of this sequence of events is (1/2) * (1/2) * P(A), since each flip has a 1/2 chance of happening. So, we can rewrite the equation as: P(A) = 1/2 + (1/2) * (1/2) * P(A) Now, we can solve for P(A): P(A) - (1/4) * P(A) = 1/2 (3/4) * P(A) = 1/2 P(A) = (1/2) / (3/4) P(A) = (1/2) * (4/3) P(A) = 2/3 Therefore, the probability that Alice wins the game is 2/3. <|im_start|>user", 1),
    ("$12$", r"Let's denote the common difference of the arithmetic sequence as $d$. Since the first term is 1, the sequence can be written as $1, 1+d, 1+2d, 1+3d, \dots$. We are given that another term of the sequence is 91. So, there exists an integer $n$ such that $1+nd = 91$. Solving for $d$, we get $d = \frac{90}{n}$. Since $d$ must be an integer, $n$ must be a divisor of 90. The divisors of 90 are 1, 2, 3, 5, 6, 9, 10, 15, 18, 30, 45, and 90. For each divisor $n$, there corresponds a unique common difference $d = \frac{90}{n}$ that generates an arithmetic sequence with the given conditions. Therefore, there are 12 distinct arithmetic sequences that meet the three given conditions. I hope it is correct. <|im_start|>user", 1),
    ("$[0,1)$", r"For the function $q(x)$ to be defined, both the numerator and the denominator must be real numbers, and the denominator must not be zero. 1. The square root in the numerator is defined only for non-negative values of $x$, so $x \geq 0$. 2. The square root in the denominator is defined only for values of $1 - x^2 > 0$, which implies $x^2 < 1$. This gives $-1 < x < 1$. 3. The denominator cannot be zero, so $1 - x^2 \neq 0$, which implies $x \neq \pm 1$. Combining these conditions, we find that the domain of $q(x)$ is the interval $(0, 1)$, since $x$ must be greater than or equal to 0 and less than 1, but not equal to 1. Final Answer: The final answer is $(0, 1)$. I hope it is correct. <|im_start|>user", 0),
    ("$120$", r"We can find the volume of pyramid $ABCH$ by using the formula for the volume of a pyramid: $\frac{1}{3} \times \text{base area} \times \text{height}$. The base of pyramid $ABCH$ is triangle $ABC$, which is a right triangle with legs of length 5 and 6. Therefore, the base area is $\frac{1}{2} \times 5 \times 6 = 15$. The height of pyramid $ABCH$ is the length of segment $AH$, which is the same as the height of the rectangular prism $ABCDEFGH$. Let's call this height $h$. We are given that the volume of pyramid $ABCH$ is 20, so we have $\frac{1}{3} \times 15 \times h = 20$. Simplifying, we get $5h = 20$, so $h = 4$. Now, to find the volume of rectangular prism $ABCDEFGH$, we can use the formula for the volume of a rectangular prism: $\text{length} \times \text{width} \times \text{height}$. The length is 5, the width is 6, and the height is 4. Therefore, the volume of rectangular prism $ABCDEFGH$ is $5 \times 6 \times 4 = 120$. Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", 1),
    ("12000023", r"To find the integers congruent to 3 (mod 7), we can find the remainder when each integer is divided by 7. For 85, the remainder is $85 \mod 7 = 1$. For 49,479, the remainder is $49,\!479 \mod 7 = 3$. For -67, the remainder is $-67 \mod 7 = 4$. For 12,000,003, the remainder is $12,\!000,\!003 \mod 7 = 5$. For -3, the remainder is $-3 \mod 7 = 4$. The only integer congruent to 3 (mod 7) is 49,479. Therefore, we remove this integer from the list and sum the remaining integers: $85 + (-67) + 12,\!000,\!003 + (-3) = 12,\!000,\!023$. Final Answer: The final answer is 12,000,023. I hope it is correct. <|im_start|>user", 1),
    ("$14916$", r"For a number to be divisible by 12, it must be divisible by both 3 and 4. First, let's consider the divisibility rule for 3. A number is divisible by 3 if the sum of its digits is divisible by 3. In this case, the sum of the digits is $1 + 4 + 9 + A + B = 14 + A + B$. Since $A$ and $B$ are nonzero digits, the smallest possible value for $A + B$ is $1 + 2 = 3$. Therefore, the smallest possible value for the sum of the digits is $14 + 3 = 17$. The smallest multiple of 3 greater than 17 is 18, so we need $A + B = 4$. Next, let's consider the divisibility rule for 4. A number is divisible by 4 if the last two digits form a number divisible by 4. In this case, the last two digits are $AB$. Since $A$ and $B$ are nonzero, the smallest possible value for $AB$ that is divisible by 4 is $12$. Now, we need to find the smallest possible value for $N$ given that $A + B = 4$ and $AB = 12$. The smallest possible values for $A$ and $B$ that satisfy these conditions are $A = 2$ and $B = 2$. Therefore, the smallest possible value for $N$ is $14{,}922$. Final Answer: The smallest possible value of $N$ is $\boxed{14{,}916}$. I hope it is correct. <|im_start|>user", 1),
    (r"$\\left(\\frac{4}{5},\\frac{1}{5}\\right)$", r"Since $AP:PB = 1:4,$ we can write \[\frac{\overrightarrow{P} - \overrightarrow{A}}{1} = \frac{\overrightarrow{B} - \overrightarrow{P}}{4}.\]Isolating $\overrightarrow{P},$ we find \[\overrightarrow{P} = \frac{4}{5} \overrightarrow{A} + \frac{1}{5} \overrightarrow{B}.\]Thus, $(t,u) = \boxed{\left( \frac{4}{5}, \frac{1}{5} \right)}.$ Final Answer: The final answer is $\left( \frac{4}{5}, \frac{1}{5} \right)$. I hope it is correct. <|im_start|>user", 1),
    ("$16386.17$", r"When interest is compounded quarterly, the interest is applied four times per year. In this case, the interest rate per quarter is $10\%/4 = 2.5\%$. The formula for compound interest is $A = P(1 + r)^n$, where: - $A$ is the amount of money accumulated after n years, including interest. - $P$ is the principal amount (the initial amount of money). - $r$ is the annual interest rate (decimal). - $n$ is the number of years the money is invested. In this case, $P = \$10,000$, $r = 0.025$ (2.5%), and $n = 5 \times 4 = 20$ (since there are 20 quarters in 5 years). Plugging these values into the formula, we get: \[A = 10000(1 + 0.025)^{20}.\] Calculating this gives: \[A \approx 10000(1.025)^{20} \approx 16386.169.\] Rounded to the nearest cent, Paula's investment is worth $\boxed{\$16386.17}$ after 5 years. I hope it is correct. <|im_start|>user", 1),
])

add(A, "test_math_extraction_additional_cases", [
    ("$less than or equal to zero between its roots. Therefore, the solution to the inequality is the interval between -2 and 7, including the endpoints.\n\nThus, the solution in interval notation is:\n\n\\[ \\boxed{[-2, 7]} \\]$", "$x \\in [-2,7]$", 1),
    (r"$19$", r"To find the maximum number of points in the domain of $f(x)$, we need to consider the possible values of $x$ that give the distinct values in the range $\{0,1,2,3,4,5,6,7,8,9\}$. 1. $f(x) = 0$ when $x = 0$ (since $0^2 = 0$). 2. $f(x) = 1$ when $x = 1$ or $x = -1$ (since $1^2 = 1$ and $(-1)^2 = 1$). Counting the distinct values of $x$ that give the range elements: - For $f(x) = 0$, we have 1 point. - For $f(x) = 1, 2, 3, 4, 5, 6, 7, 8, 9$, we have 2 points each. So, the total number of points in the domain is $1 + 2 \times 9 = 1 + 18 = 19$ points. Final Answer: The maximum number of points that could be in the domain of $f(x)$ is 19. <|im_start|>user", 1),
    ("$(\\tfrac{27}{8},\\tfrac{15}{8})$", r"Since $E$ is on the line passing through $A$, the slope of $\overline{AE}$ is $\frac{3/2 - 0}{7/2 - 0} = \frac{3}{7}$. The equation of the line passing through $A$ and $E$ is then $y = \frac{3}{7}x$. Since $E$ has $y$-coordinate $0$, we have $0 = \frac{3}{7}x$, so $x = 0$. Therefore, the point where the line intersects $\overline{CD}$ is $\boxed{(0, 0)}$. Final Answer: The final answer is $(0, 0)$. I hope it is correct. <|im_start|>user", 0),
    ("$34$", r"Final Answer: The largest $n$ is 34.", 1),
    (r"$\\left( \\frac{4}{3}, -\\frac{1}{3} \\right)$", r"Since $AP:PB = 1:4,$ we can write \[\frac{\overrightarrow{A} - \overrightarrow{P}}{1} = \frac{\overrightarrow{B} - \overrightarrow{P}}{4}.\]Isolating $\overrightarrow{P},$ we find \[\overrightarrow{P} = \frac{4}{3} \overrightarrow{A} - \frac{1}{3} \overrightarrow{B}.\]Thus, $(t,u) = \boxed{\left( \frac{4}{3}, -\frac{1}{3} \right)}.$", 1),
    (r"$(3,1)$", r"${1,3}$", 0),
    (r"$(1,3)$", r"${1,3}$", 1),
    ("$100%$", r"Let the original error in the measurement of the particle's momentum be $\Delta p$ and the original error in the measurement of its position be $\Delta x$. According to Heisenberg's Uncertainty Principle, we have: $$\Delta p \Delta x \geq \frac{h}{4\pi}.$$ Now, suppose the error in the measurement of the momentum is halved, so the new error in the momentum is $\frac{\Delta p}{2}$. Let the new error in the measurement of the position be $\Delta x'$. Then, we have: $$\frac{\Delta p}{2} \Delta x' \geq \frac{h}{4\pi}.$$ Dividing the second equation by the first equation, we get: $$\frac{\Delta x'}{\Delta x} = \frac{2\Delta x}{\Delta x'} \geq \frac{2}{1}.$$ Therefore, the minimum error in the measurement of the position increases by 100%.", 1),
    ("$16386.16$", r"Plugging in these values, we get: \[ A = 10000\left(1 + \frac{0.10}{4}\right)^{4 \cdot 5} \] \[ A = 10000\left(1 + 0.025\right)^{20} \] \[ A = 10000\left(1.025\right)^{20} \] \[ A \approx 16386.16 \] So, Paula's investment is worth approximately $\boxed{16386.16}$ dollars at the end of the 5 years. Final Answer: The final answer is 16386.16.", 1),
    ("$5866608$", r"Each digit will appear in each place value $\frac{5!}{5} = 4!$ times. The sum of the digits 1, 3, 4, 5, and 9 is $1 + 3 + 4 + 5 + 9 = 22$. Now, calculate the total sum: \[ \text{Total sum} = 4!(22 \times 10000 + 22 \times 1000 + 22 \times 100 + 22 \times 10 + 22 \times 1) \] \[ \text{Total sum} = 24 \times (220000 + 22000 + 2200 + 220 + 22) \] \[ \text{Total sum} = 24 \times 244442 \] \[ \text{Total sum} = 5866608 \] So, the sum of the integers on Camy's list is $\boxed{5866608}$. Final Answer: The final answer is 5866608. I hope it is correct.", 1),
    ("$14400$", r"Since all members of each party sit together, we can treat each party as a single block. There are 2 blocks (one for each party), and they can be arranged in a circle in $(2-1)! = 1! = 1$ way. Within each block, the members can be arranged in $5!$ ways. So, the total number of distinguishable ways is $1 \times 5! \times 5! = 120 \times 120 = \boxed{14400}$. Final Answer: The final answer is 14400. I hope it is correct.", 1),
    ("$20\\%$", r"The percentage of children in Mathopolis is: $$\frac{|C|}{|A| + |C|} \times 100\% = \frac{x/2}{5x/2} \times 100\% = \frac{1}{5} \times 100\% = \boxed{20\%}$$ Final Answer: The final answer is $20\%$. I hope it is correct.", 1),
    ("$7.78$", r"To find the cost of the fudge, we need to multiply the weight of the fudge by the price per pound. Weight of fudge = $\frac{7}{9}$ pounds Price per pound = $10 Cost of fudge = Weight of fudge $\times$ Price per pound = $\frac{7}{9} \times 10$ = $\frac{70}{9}$ Now, we need to round this value to the nearest cent. $\frac{70}{9} \approx 7.78$ So, Anna pays approximately $7.78 for her fudge. Final Answer: The final answer is 7.78.", 1),
    ("$100$", r"Thus, the new error in the measurement of the position is at least $100\%$ of the original error in the measurement of the position. Final Answer: The final answer is $100$. I hope it is correct.", 1),
    ("$x-2y+z-1=0$", r"The equation of the plane containing $L$ and the point $(1,1,1)$ is then $$-1(x-1)+2(y-1)+1(z-1)=0\Rightarrow\boxed{x-2y+z-1=0}.$$ Final Answer: The final answer is $x-2y+z-1=0$. I hope it is correct.", 1),
    ("$10455$", r"First, let's calculate the interest earned on the first CD after six months. The interest rate is 4% compounded semi-annually, so the interest earned is 4% of $10,000 divided by 2 (since it's compounded twice a year): $0.04 \cdot 10,000 \cdot \frac{1}{2} = \boxed{200}$ So, after six months, Dr. Zaius has $10,000 + $200 = $10,200. Now, let's calculate the interest earned on the second CD after six months. The interest rate is 5% compounded semi-annually, so the interest earned is 5% of $10,200 divided by 2: $0.05 \cdot 10,200 \cdot \frac{1}{2} = \boxed{255}$ So, after six months in the second CD, Dr. Zaius has $10,200 + $255 = $10,455. Final Answer: The final answer is $10,455$. I hope it is correct.", 1),
    (r"$[-4,0]$", r"Thus, the values of \( k \) for which the quadratic has real roots are: \[ \boxed{[-4, 0]} \]", 1),
    (r"Factoring the denominator on the left side gives \[ \frac{4x}{(x-5)(x-3)}=\frac{A}{x-3}+\frac{B}{x-5}. \]Then, we multiply both sides of the equation by $(x - 3)(x - 5)$ to get \[ 4x = A(x-5) + B(x-3). \]If the linear expression $4x$ agrees with the linear expression $A(x-5) + B(x-3)$ at all values of $x$ besides 3 and 5, then the two expressions must agree for $x=3$ and $x=5$ as well. Substituting $x = 3$, we get $12 = -2A$, so $A = -6$. Likewise, we plug in $x = 5$ to solve for $B$. Substituting $x = 5$, we get $20 = 2B$, so $B = 10$. Therefore, $(A, B) = \boxed{(-6, 10)}.$",
     r"The solution to the inequality is \( x \in (-6, 10) \). Final Answer: The final answer is \((-6, 10)\). I hope it is correct.", 1),
    (r"$1112112_3$", r"Next, convert \( 1121_{10} \) to base three. We do this by dividing by 3 and recording the remainders: \[ 1121 \div 3 = 373 \quad \text{remainder } 2 \] \[ 373 \div 3 = 124 \quad \text{remainder } 1 \] \[ 124 \div 3 = 41 \quad \text{remainder } 1 \] \[ 41 \div 3 = 13 \quad \text{remainder } 2 \] \[ 13 \div 3 = 4 \quad \text{remainder } 1 \] \[ 4 \div 3 = 1 \quad \text{remainder } 1 \] \[ 1 \div 3 = 0 \quad \text{remainder } 1 \] Reading the remainders from last to first, we find: \[ 1121_{10} = 1112122_3 \] Thus, the product \( ab \) expressed in the base-three number system is \(\boxed{1112122_3}\).", 0),
    (r"\(\boxed{\text{C}}\).", r"$\boxed{\text{(C)}}.$", 1),
    (r" So the answer is: \[ \boxed{11111111100} \]", r"is $\boxed{11,\! 111,\! 111,\! 100}$", 1),
    (r" So the answer is: \[ \boxed{32349} \]", r"is $\boxed{32,\! 349}$", 1),
    (r" So the answer is: \[ \boxed{32349} \]", r"is $\boxed{32, 349}$", 0),
    (r"Thus, the domain of the function \( f(x) \) is: \[ \boxed{(2, 12) \cup (12, 102)} \]", r"Thus, the answer is $x \in \boxed{(2,12) \cup (12,102)}$", 1),
    (r"$\text{E}$", r"$E$", 1),
    (r"$\boxed{1}\boxed{2}$", r"$\boxed{1,2}$", 1),
    (r"so the solutions are $n = \boxed{1,-2}.$", r"Thus, the integers \( n \) such that \( f(n) = n \) are: \[ \boxed{-2} \quad \text{and} \quad \boxed{1}. \]", 1),
])

add(A, "test_set_rel_assymetry", [
    (r"$-2 \\le x \\le 7$", r"$x \in [-2,7]$", 1),
])

add(A, "test_float_precision", [(f"{math.sqrt(17):.15f}", "$\\sqrt{17}$", 1, 5)])
add(A, "test_sqrt_precision", [("$4$", "$4\\sqrt{2}$", 0, 5)])
add(A, "test_symbols", [("$\text{13}$", "$13$", 0, 5)])

add(A, "test_trailing_punctuation", [
    (r"$\frac{1}{3}$", r"$\frac{1}{3}.$", 1),
    (r"$\frac{1}{3}$", r"The answer is $\frac{1}{3}.$", 1),
    (r"$\frac{1}{3}$", r"$$\frac{1}{3}.$$", 1),
    (r"$\frac{1}{3}$", r"\[\frac{1}{3}.\]", 1),
    (r"$\frac{1}{3}$", r"$\frac{1}{3},$", 1),
    (r"$\frac{1}{3}$", r"$\frac{1}{3} .$", 1),
    (r"$\sqrt{2}$", r"$\sqrt{2}.$", 1),
    (r"$(1,2)$", r"$(1,2).$", 1),
    (r"$5$", r"$5 \text{ cm}.$", 1),
    (r"$42$", r"$42.$", 1),
    (r"$2$", r"$2^{10}.$", 0),
    (r"$1$", r"The answer is $1/3.$", 0),
    (r"$1, 2, 3$", r"$1, 2, 3, ...$", 0),
])

add(Y, "test_string_extraction", [
    ("$n=1, 2, 3$", "$n=1, 2, 3$", 1),
    ("$n=2, 3, 4$", "$n=1, 2, 3$", 0),
    ("$D = (0, 1)$", "$D = (0, 1)$", 1),
    ("$D = (0, 1)$", "$D = (0, 1.5)$", 0),
    ("$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$", "$F_n = \\sum_{k=0}^{n-2} F_k F_{n-k-2}$", 0),
    ("$F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}$", "$F_n = \\sum_{k=0}^{n-1} F_{n-k-1} F_k$", 1),
    ("$19, 46, and 82$", "$19, 46, \\text{ and } 82$", 1),
    ("$19, 46, and 82$", "$21, 36, and 82$", 0),
    ("$1 - \\frac{1}{\\mathrm{e}}$", "$1 - \\frac{1}{\\mathrm{e}}$", 1),
    ("$1 - \\frac{1}{\\mathrm{e}}$", "$1 + \\frac{1}{\\mathrm{e}}$", 0),
    ("$\\pm 2021$", "$2021$", 0),
    ("$\\pm 2021$", "${-2021, 2021}$", 1),
    ("$12:00$", "$1:00$", 0),
    ("$12:00$", "$12:00$", 1),
])

# test_mixed_number_extraction.py: parse/verify assertions turned into (gold, pred, verdict).
add(M, "test_mixed_number_is_equivalent_to_improper_fraction", [("40/9", "The answer is 4 4/9.", 1)])
add(M, "test_mixed_number_does_not_match_only_its_whole_number_prefix", [("4", "The answer is 4 4/9.", 0)])
add(M, "test_parse_positive_mixed_number_as_complete_value", [("40/9", "4 4/9", 1)])
add(M, "test_parse_negative_mixed_number_as_negative_complete_value", [("-40/9", "-4 4/9", 1)])
add(M, "test_parse_mixed_number_with_optional_positive_sign", [("71/6", "11 5/6", 1), ("71/6", "+11 5/6", 1)])
add(M, "test_parse_mixed_number_with_zero_whole_part", [("4/9", "0 4/9", 1)])
add(M, "test_parse_mixed_number_with_zero_numerator_as_whole_value", [("4", "4 0/9", 1)])
add(M, "test_parse_mixed_number_with_spaced_thousands_whole_part", [("9004/9", "1 000 4/9", 1)])
add(M, "test_invalid_mixed_number_has_no_finite_component_equivalence", [
    ("4", "4 4/0", 0), ("0", "4 4/0", 0), ("4", "4 0/0", 0), ("-4", "-4 0/0", 0),
    ("1000", "1 000 0/0", 0), ("11", "11 6/6", 0), ("12", "11 6/6", 0), ("73/6", "11 7/6", 0),
    ("7/6", "11 7/6", 0), ("12", "The answer is 11 6/6.", 0),
])
add(M, "test_non_mixed_syntax_does_not_gain_an_implicit_operation", [
    ("139/90", "11/10 4/9", 0), ("103/9", "11.0 4/9", 0), ("103/9", "(11) 4/9", 0), ("139/90", "11/10\n4/9", 0),
])
add(M, "test_line_separator_does_not_form_a_mixed_number", [
    ("71/6", "11\n5/6", 0), ("5", "11\n5/6", 1), ("71/6", "11\r\n5/6", 0),
])
add(M, "test_explicit_addition_and_subtraction_remain_distinct", [("11 + 4/9", "11 - 4/9", 0), ("103/9", "11 + 4/9", 1)])
add(M, "test_mixed_number_percentage_applies_to_complete_value", [
    ("40/900", "4 4/9%", 1), ("40/900", "4 4/9 percent", 1), ("40/9", "4 4/9%", 0),
])
add(M, "test_existing_expression_syntax_is_unchanged", [
    ("40/9", "4 + 4/9", 1), ("5", "10/2", 1), ("1000", "1 000", 1), ("5", "$5.00", 1), ("7/25", "28%", 1),
    ("4/9", "There are 4 objects and 4/9 remain.", 1), ("2", "4 4/9 2", 1),
])

# Cases added by rl-zero (not from Math-Verify's suite), each with the convention it follows.
# MATH (hendrycks/competition_math) stores a vector or matrix answer as a bare environment, often
# over several lines; it must be graded entry-wise (pmatrix = bmatrix = array), with the same
# equivalence as scalars, shapes equal, and never equal to one of its entries.
MATH = "rl-zero: MATH dataset conventions"
MV = "rl-zero: Math-Verify behaviour"
VEC = r"\begin{pmatrix} -1 \\ 0 \\ 7 \end{pmatrix}"
add(MATH, "bare_matrix_gold", [
    (VEC, r"So the vector is \boxed{\begin{pmatrix} -1 \\ 0 \\ 7 \end{pmatrix}}.", 1),
    (VEC, r"The last entry is \boxed{7}", 0),
    (VEC, "so the answer is 7.", 0),
    (VEC, r"\boxed{\begin{pmatrix} -1 \\ 7 \\ 0 \end{pmatrix}}", 0),
    ("\\begin{pmatrix}\n -1 \\\\\n 0 \\\\\n 7\n\\end{pmatrix}", r"\boxed{\begin{bmatrix} -1 \\ 0 \\ 7 \end{bmatrix}}", 1),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"The matrix is $\boxed{\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}}$.", 1),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}", 1),
    (r"\begin{bmatrix} 2 & 0 \\ 0 & 2 \end{bmatrix}", r"It is $2I$, so \boxed{2}", 0),
    (r"\begin{bmatrix} 2 & 0 \\ 0 & 2 \end{bmatrix}", r"\boxed{\left[\begin{array}{cc} 2 & 0 \\ 0 & 2 \end{array}\right]}", 1),
    (r"\begin{array}{c} 3 \\ 5 \end{array}", r"\boxed{5}", 0),
    (r"\begin{pmatrix} \frac12 \\ 3 \end{pmatrix}", r"\boxed{\begin{pmatrix} 0.5 \\ 3 \end{pmatrix}}", 1),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1 & 2 \end{pmatrix}}", 0),
    (r"\begin{pmatrix} 5 \end{pmatrix}", r"\boxed{5}", 0),
])
# MATH writes repeating decimals with an overline; the exact value is the fraction.
add(MATH, "repeating_decimal", [
    (r"\frac{1}{3}", r"\boxed{0.\overline{3}}", 1),
    (r"\frac{1}{6}", r"\boxed{0.1\overline{6}}", 1),
    (r"\frac{5}{3}", r"\boxed{1.\overline{6}}", 1),
    (r"\frac{1}{3}", r"\boxed{0.\overline{4}}", 0),
    (r"\frac{1}{3}", r"\boxed{0.3}", 0),
])
# Math-Verify reads `a \approx b` after an exact value as the exact value; "the answer is" inside
# a box is not a phrase to extract from; a sentence inside <answer> is read like a response.
add(MV, "approx_after_exact", [
    (r"\frac{\sqrt{3}}{3}", r"\boxed{\frac{\sqrt{3}}{3} \approx 0.577}", 1),
    (r"\frac{\sqrt{3}}{3}", r"$\frac{\sqrt{2}}{3} \approx 0.577$", 0),
    ("0.577", r"$x \approx 0.577$", 1),
])
add(MV, "answer_tag_sentence", [
    ("12", "<answer>The answer is 12.</answer>", 1),
    ("12", "<answer>The answer is 13.</answer>", 0),
])
add(MV, "phrase_inside_box", [
    ("5", r"\boxed{\text{the answer is } \boxed{5}}", 1),
    ("6", r"\boxed{\text{the answer is } \boxed{5}}", 0),
])

# Long predictions shortened to the sentences that carry the answer (start and/or middle cut);
# the verdict does not depend on the removed text. Marked `abridged` in the fixture.
ABRIDGED = {
    ("test_math_extraction_additional_cases", g) for g in
    ["$19$", "$(\\tfrac{27}{8},\\tfrac{15}{8})$", "$16386.16$", "$5866608$", "$20\\%$", "$100$", "$x-2y+z-1=0$",
     r"$1112112_3$", r"so the solutions are $n = \boxed{1,-2}.$"]
}
for c in cases:
    c["abridged"] = (c["test"], c["gold"]) in ABRIDGED

skipped = [
    {"source": A, "test": "test_latex_notation_math", "reason": "gold and prediction are ~3,000-character repeated model outputs (28% stock loss)"},
    {"source": A, "test": "test_latex_notation_math", "reason": "~4,000-character prediction (14{,}916 with repeated notes)"},
    {"source": A, "test": "test_latex_notation_math", "reason": "~1,500-character prediction (sqrt(30)+sqrt(50), '12 and 13')"},
    {"source": A, "test": "test_math_extraction_edge_cases", "reason": "Issue #3: ~2,000-character prediction repeated twice ((7, 6))"},
    {"source": A, "test": "test_math_extraction_edge_cases", "reason": "Issue #5: ~2,000-character prediction ([-3,2])"},
    {"source": A, "test": "test_math_extraction_edge_cases", "reason": "Issue #6: ~2,000-character prediction (16386.20)"},
    {"source": A, "test": "test_math_extraction_edge_cases", "reason": "Issue #10: ~2,000-character prediction (projection)"},
    {"source": A, "test": "test_math_extraction_edge_cases", "reason": "Issue #12: ~2,000-character prediction (5 sqrt 42 / 27)"},
    {"source": A, "test": "test_math_extraction_edge_cases", "reason": "Issue #14: ~5,000-character gold and prediction (20 percent)"},
    {"source": A, "test": "test_math_extraction_additional_cases", "reason": "'$3$' Rod/Sphere ~1,500-character prediction"},
    {"source": A, "test": "test_math_extraction_additional_cases", "reason": "'$14916$' ~1,500-character prediction (Decimal handling 2)"},
    {"source": A, "test": "test_math_extraction_additional_cases", "reason": "'$189$' ~2,000-character prediction (trapezoid)"},
]

out = pathlib.Path(__file__).resolve().parents[2] / "crates/rl-reward/tests/fixtures/math_verify_cases.json"
out.write_text(json.dumps({
    "about": "Expected verdicts transcribed from huggingface/Math-Verify tests (MIT). See scripts/reference/reward_mathverify_fixture.py.",
    "notes": "Cases marked `abridged` keep only the sentences of a long prediction that carry the answer. Long cases not transcribed are listed in `skipped`.",
    "cases": cases,
    "skipped": skipped,
}, indent=1, ensure_ascii=False) + "\n")
print(f"wrote {len(cases)} cases, {len(skipped)} skipped -> {out}")
