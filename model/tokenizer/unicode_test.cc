#include "model/tokenizer/unicode.h"

#include <gtest/gtest.h>

#include "model/tokenizer/utf8.h"

namespace moemesh {
namespace {

std::string Nfc8(const std::string& s) {
  auto cps = utf8::Decode(s);
  EXPECT_TRUE(cps.ok());
  std::string out;
  for (char32_t c : unicode::Nfc(*cps)) utf8::Append(c, out);
  return out;
}

TEST(UnicodeTest, Categories) {
  EXPECT_TRUE(unicode::IsLetter('a'));
  EXPECT_TRUE(unicode::IsLetter(0x4E2D));   // 中 Lo
  EXPECT_TRUE(unicode::IsLetter(0x02B0));   // ʰ Lm
  EXPECT_FALSE(unicode::IsLetter(0x0301));  // combining acute: Mn
  EXPECT_FALSE(unicode::IsLetter('1'));
  EXPECT_TRUE(unicode::IsNumber(0x0663));   // Arabic-Indic three: Nd
  EXPECT_TRUE(unicode::IsNumber(0x2163));   // Roman numeral four: Nl
  EXPECT_TRUE(unicode::IsNumber(0x00BD));   // ½: No
  EXPECT_FALSE(unicode::IsNumber('x'));
  EXPECT_TRUE(unicode::IsWhiteSpace(0x3000));
  EXPECT_TRUE(unicode::IsWhiteSpace(0x85));
  EXPECT_TRUE(unicode::IsWhiteSpace(0x0B));
  EXPECT_FALSE(unicode::IsWhiteSpace(0x200B));  // zero width space is not White_Space
  EXPECT_FALSE(unicode::IsWhiteSpace(0x1C));    // Python isspace() says yes, Unicode no
  EXPECT_FALSE(unicode::IsLetter(0x1F600));     // emoji: So
  EXPECT_EQ(unicode::CombiningClass(0x0301), 230);
  EXPECT_EQ(unicode::CombiningClass(0x0323), 220);
  EXPECT_EQ(unicode::CombiningClass('a'), 0);
}

TEST(UnicodeTest, NfcComposes) {
  EXPECT_EQ(Nfc8("e\xCC\x81"), "\xC3\xA9");                        // e + U+0301 -> é
  EXPECT_EQ(Nfc8("\xE1\x84\x80\xE1\x85\xA1"), "\xEA\xB0\x80");      // ᄀ + ᅡ -> 가
  EXPECT_EQ(Nfc8("\xEA\xB0\x80\xE1\x86\xA8"), "\xEA\xB0\x81");      // 가 + ᆨ -> 각
  EXPECT_EQ(Nfc8("\xE2\x84\xAB"), "\xC3\x85");                      // Å Angstrom sign -> Å
  EXPECT_EQ(Nfc8("\xE0\xA5\x98"), "\xE0\xA4\x95\xE0\xA4\xBC");      // U+0958 is excluded
  // d + dot below (220) + dot above (230) in either order -> ḍ + U+0307.
  EXPECT_EQ(Nfc8("d\xCC\x87\xCC\xA3"), "\xE1\xB8\x8D\xCC\x87");
  EXPECT_EQ(Nfc8("d\xCC\xA3\xCC\x87"), "\xE1\xB8\x8D\xCC\x87");
  // A mark blocked by another of the same class does not compose: a + U+0301 + U+0301.
  EXPECT_EQ(Nfc8("a\xCC\x81\xCC\x81"), "\xC3\xA1\xCC\x81");
  EXPECT_EQ(Nfc8("\xCC\x81" "e"), "\xCC\x81" "e");                  // leading mark stays
  EXPECT_EQ(Nfc8("plain ascii"), "plain ascii");
}

TEST(Utf8Test, StrictDecodeNamesOffset) {
  auto r = utf8::Decode("ab\xC3(");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("byte offset 2"), std::string::npos) << r.status();
  EXPECT_FALSE(utf8::Decode("\xED\xA0\x80").ok());  // surrogate
  EXPECT_FALSE(utf8::Decode("\xC0\xAF").ok());      // overlong
  EXPECT_FALSE(utf8::Decode("\xF4\x90\x80\x80").ok());  // > U+10FFFF
  EXPECT_TRUE(utf8::Decode("\xF0\x9F\x98\x80").ok());
}

TEST(Utf8Test, LossyReplacesMaximalSubparts) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8::DecodeLossy("\xE2\x82" "A"), r + "A");      // truncated 3-byte sequence: one
  EXPECT_EQ(utf8::DecodeLossy("\xF0\x80\x80"), r + r + r);    // F0 80 is not a valid prefix
  EXPECT_EQ(utf8::DecodeLossy("\xED\xA0\x80"), r + r + r);    // surrogates: each byte
  EXPECT_EQ(utf8::DecodeLossy("\xC0\xAF"), r + r);
  EXPECT_EQ(utf8::DecodeLossy("\xF0\x9F\x98"), r);            // truncated emoji at end: one
  EXPECT_EQ(utf8::DecodeLossy("a\xFF" "b"), "a" + r + "b");
  EXPECT_EQ(utf8::DecodeLossy("\xC3\xA9"), "\xC3\xA9");
}

TEST(Utf8Test, IncompleteTail) {
  EXPECT_EQ(utf8::IncompleteTailLength("ab"), 0u);
  EXPECT_EQ(utf8::IncompleteTailLength("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8::IncompleteTailLength("a\xE2"), 1u);
  EXPECT_EQ(utf8::IncompleteTailLength("a\xE0\x80"), 0u);  // E0 80 can never be valid
  EXPECT_EQ(utf8::IncompleteTailLength("\xC3\xA9"), 0u);
  EXPECT_EQ(utf8::IncompleteTailLength("\xFF"), 0u);
}

}  // namespace
}  // namespace moemesh
