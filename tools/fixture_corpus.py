"""Text for tools/gen_fixtures.py: the corpus the fixture tokenizers and the demo model are
trained on, and the strings whose expected encodings are recorded. Data only."""

# Training text for the tokenizers and the demo model. Written for this project.
TRAIN_CORPUS = """\
The quick brown fox jumps over the lazy dog. The lazy dog sleeps in the warm sun, and the
quick brown fox runs back into the green forest before the farmer wakes up.

Once upon a time there was a small town beside a wide river. Every morning the baker opened
his shop at six o'clock, and the smell of fresh bread filled the street. The children walked
to school along the river, counting the boats: one, two, three, four, five. In the evening
the old men sat on the bridge and talked about the weather, the harvest and the price of
fish. "It's going to rain tomorrow," said one of them. "I don't think so," said another.
"We'll see," said the third, and they all laughed.

The library in the town had three floors. On the first floor there were newspapers and
maps; on the second floor, novels and poems; on the third floor, old books about history,
mathematics and the stars. The librarian knew every book by heart. When a child asked her
a question, she would smile and say: "Let's find out together."

A simple recipe for tomato soup: cut four tomatoes and one onion, cook them in a pot with
a little olive oil for ten minutes, add two cups of water and a pinch of salt, then let it
simmer for twenty minutes. Serve it hot with bread. It's cheap, it's quick, and it's good.

def fibonacci(n):
    \"\"\"Return the n-th Fibonacci number.\"\"\"
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

for i in range(10):
    print(i, fibonacci(i))

int main(void) {
    int total = 0;
    for (int i = 0; i < 100; ++i) {
        total += i * i;
    }
    printf("%d\\n", total);
    return 0;
}

{"name": "moemesh", "version": "0.1.0", "experts": 64, "top_k": 8, "layers": [1, 2, 3]}
$ ls -la /usr/local/bin && echo "done" > /tmp/status.txt

Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 2024 3.14159 2.71828 1,000,000 42%
Dates: 2024-03-15, 1999-12-31, 12/25/2023. Prices: $19.99, EUR 5.50, 1200 yen.
Phone: +1 (555) 013-2468. Version 3.11.4, port 8080, address 192.168.0.1.

| item    | count | price |
|---------|-------|-------|
| apples  |    12 |  3.40 |
| pears   |     7 |  2.10 |

The weather today is cloudy with a chance of rain in the afternoon. Tomorrow will be sunny
and warm, with a light wind from the west. The sea is calm, and the fishing boats will go out
early in the morning. I'm sure you'll enjoy the walk along the coast if you start early.

Machine learning models learn patterns from data. A mixture of experts sends each token to a
few experts chosen by a small router, so only a part of the network runs for every token.
Attention lets each token look at the tokens before it. The cache keeps the keys and values
so that the model does not compute them again.

中文：今天天气很好，我们去公园散步吧。学习语言需要时间和耐心。
日本語：今日はいい天気ですね。猫が窓のそばで寝ています。
Русский: Быстрая коричневая лиса прыгает через ленивую собаку. Привет, мир!
Ελληνικά: Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. Καλημέρα!
العربية: الثعلب البني السريع يقفز فوق الكلب الكسول. مرحبا بالعالم!
Emoji: 😀 🎉 👍 🦊 🐶 ❤️ 🚀 ☕ 🌧️ 🌞

Dear friend, thank you for your letter. We're all well here. The garden is full of
flowers, the cat has learned to open the door, and the apple tree gave us more fruit than
ever. Please write again soon, and tell us about your new job in the city.

The quick brown fox jumps over the lazy dog again and again, because it's a good sentence:
it uses every letter of the alphabet. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!
"""

# Tokenizer test strings: different from the training text, chosen for edge cases.
TEST_CORPUS = [
    "",
    " ",
    "a",
    "Hello, world!",
    "hello world",
    " leading space",
    "trailing space ",
    "trailing spaces   ",
    "   three leading spaces",
    "two  spaces   three    four",
    "tab\tseparated\tvalues",
    "\t\tindented with tabs",
    "line one\nline two",
    "windows\r\nline\r\nendings",
    "mixed\nnewlines\r\nand\rcarriage\n\n\nreturns",
    "\n",
    "\n\n",
    "ends with newline\n",
    "  \n  spaces around newline  \n",
    "I'm here, you're there, he's gone.",
    "DON'T SHOUT, WE'LL HEAR YOU",
    "we'll they'd it's I've",
    "rock'n'roll o'clock",
    "1234567890",
    "3.14159265358979323846",
    "12345 678 9",
    "Pi is 3.14 and e is 2.718; 1,000,000 > 999,999.",
    "def add(a, b):\n    return a + b\n",
    "if (x) {\n\tfoo();\n}\n",
    "    for i in range(3):\n        print(i)",
    "x=1;y=2;z=x+y",
    "https://example.com/path?q=1&r=two#frag",
    "!",
    "?!...",
    "---",
    "(\u00a0)",
    "non\u00a0breaking\u00a0space",
    "ideographic\u3000space",
    "\u3000\u3000",
    "日本語のテキスト",
    "我爱北京天安门。",
    "한국어 문장입니다",
    "Привет, как дела?",
    "Γειά σου Κόσμε",
    "مرحبا كيف حالك",
    "emoji 😀😃😄",
    "family 👨\u200d👩\u200d👧\u200d👦 together",
    "thumbs 👍🏽 and 👋🏿",
    "flags 🇫🇷🇯🇵",
    "heart ❤️ red",
    "cafe\u0301 (decomposed)",
    "café (composed)",
    "Tiếng Việt có dấu",
    "Vie\u0302\u0323t Nam",
    "हिन्दी भाषा",
    "<|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>",
    "text<|endoftext|>more text",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
    "ALL CAPS AND lower case MiXeD",
    "a\u0300\u0301\u0302 stacked marks",
    "zero\u200bwidth",
]
