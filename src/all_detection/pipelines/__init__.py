"""One pipeline per stage of the data's journey, in the order the paper's Figure 3 draws them."""
