// One kind of error for everything a caller can get wrong or a bundle can hold wrong: a one-line message.
#pragma once

#include <stdexcept>
#include <string>

namespace flash_edge {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace flash_edge
