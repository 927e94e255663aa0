// Python's string operations on UTF-8 text, as chat templates use them: lengths, indices and
// slices count code points; strip and split use Python's notion of whitespace. Case mapping
// covers ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (other scripts are left as they are;
// Python's final-sigma rule and special lower-casings are not applied).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kbit::generate::jinja {

// The code points of `s`, each as its UTF-8 bytes.
std::vector<std::string> utf8_chars(const std::string& s);
// len(s) in Python: the number of code points.
int64_t utf8_length(const std::string& s);

// str.strip / lstrip / rstrip: `chars` empty strips whitespace, else those code points.
std::string python_strip(const std::string& s, const std::string& chars, bool left, bool right);
// str.split(): on runs of whitespace; str.split(sep, maxsplit) otherwise (maxsplit < 0: all).
std::vector<std::string> python_split(const std::string& s, const std::string* sep,
                                      int64_t maxsplit);
// str.replace(old, new, count) (count < 0: all).
std::string python_replace(const std::string& s, const std::string& old_text,
                           const std::string& new_text, int64_t count);
// str.upper() / str.lower().
std::string python_upper(std::string s);
std::string python_lower(std::string s);
// str.title(): a letter after a non-letter is upper-cased, other letters lower-cased.
std::string python_title(const std::string& s);
// str.capitalize(): the first character upper-cased, the rest lower-cased.
std::string python_capitalize(const std::string& s);
// jinja2's |title: each word (split at '-', whitespace, '(', '{', '[', '<') capitalized.
std::string jinja_title(const std::string& s);
// True when the code point at the start of `c` (one utf8_chars element) is whitespace.
bool python_isspace(const std::string& c);

}  // namespace kbit::generate::jinja
